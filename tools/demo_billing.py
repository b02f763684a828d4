"""The billing demo (`make demo-billing`; docs/PROTOCOL.md sections 28-30): a district of
households billed for one day from their meters' signed readings, with an outage on one
feeder, a demand-response event, points redeemed, every bill verified offline and the
outage traced to its cause.

    python -m tools.demo_billing [--customers 20] [--out DIR]

The real parts, in this process on one simulated clock: the dispatch chain (the embedded
backend behind its HTTP API), a fog node (its SQLite stores, cooker, scheduler, chain link
and fault reporter, behind its HTTP API), and the command-line tools a utility, a customer
and an auditor use over those APIs (`meterledger bill run`, `meterledger audit
bill-bundle` and `bill`, `meterledger trace`). The meters are the one simulated part: each
household's readings for the seven days before the billed day and for that day, signed with
its own key (SPEC section 4) and ingested as the broker would hand them over.

The story: a utility proposes a tariff (time-of-use, demand charge, outage compensation,
points accepted) and a regulator approves it; every customer is enrolled in the market (a
grant of points); an operator registers feeder f1's transformer, whose maintenance is
overdue. The customers on f1 lose supply from 18:00 to 20:00 of the billed day: the fog sees
the outage, and once supply is back its closed outage record goes to the chain. Some
customers take part in a demand-response event from 17:00 to 18:00 and are paid in points,
which two of them redeem against their bill. The billing run bills every customer (the
outage credited to the f1 customers), each bill's proof bundle is fetched through the APIs
and checked offline to the cent, and the outage is determined (poor maintenance) and traced.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.chain.service.api import AggregatorAPI
from aggregator.chain.service.node import ensure_token, init_data_dir, open_ledger
from aggregator.dispatch.suggestions import open_dispatcher
from fog_node.api import FogAPI
from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.dr import DemandResponse as FogDR
from fog_node.chainlink.faults import FaultReporter
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.cooking.feeders import Feeder
from fog_node.node import FogNode
from fog_node.node import init_data_dir as init_fog
from fog_node.scheduler import Scheduler
from hardware import firmware
from meterledger import wire as P
from meterledger.bill_cli import main as bill_main
from meterledger.clients.chain import ChainClient, ChainClientError, ChainRefused, Sender
from meterledger.wire import billing as BL
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import dr as DR
from meterledger.wire import market as MK
from meterledger.wire import trace as DV
from tools import audit, trace_cli

DAY, IVL = 86_400, 900
BILLED = 1_800_000_000 - 1_800_000_000 % DAY  # 2027-01-15 00:00 UTC: the billed day
HISTORY_DAYS = 7  # the days before it (the outage's baseline)
OUTAGE = (BILLED + 18 * 3600, BILLED + 20 * 3600)  # feeder f1 off
REDEEM_AT = BILLED + 21 * 3600
POINT = 10**6
# night 12 c/kWh until 07:00, day 28 c/kWh, evening peak 36 c/kWh from 17:00 to 21:00;
# 3 c per kW of the day's peak; 0.40 a day; after an hour's outage 2.00 per kWh not
# served, at most 10.00 an outage; 1 cent a point redeemed
PERIODS = [(0, 12_000), (420, 28_000), (1020, 36_000), (1260, 28_000)]
TARIFF = {"demand_rate": 3_000, "fixed": 40_000, "grace_s": 3_600,
          "compensation_rate": 200_000, "compensation_cap": 1_000_000, "points_rate": 1_000}


class SimTime:
    """The one clock of the chain, the fog and the meters; only the demo moves it."""

    def __init__(self, t: int) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t


@dataclass
class Household:
    name: str
    account: bytes
    meter: Any  # the firmware's meter app (firmware/app.py): its key, its commands
    party: P.SigningKey  # the customer's chain key (market points, demand response)
    feeder: str
    seq: int = 0
    register: int = 0
    prev: bytes = P.ZERO32
    rng: random.Random = field(default_factory=random.Random)

    @property
    def key(self) -> P.SigningKey:
        """The meter's key, born on the device (its flash)."""
        return P.SigningKey.from_bytes(self.meter.meter.key.private_bytes())

    def use(self, ivl: int) -> int:
        """Wh in the quarter hour ending at ivl: a base load, the morning and the evening
        peaks, some noise (the household's own seed, so the demo is the same every run),
        never above the power limit the meter's firmware holds (a fog's `limit` command)."""
        hour = (ivl - IVL) % DAY // 3600
        wh = 40 + self.rng.randrange(30)
        if 6 <= hour < 9:
            wh += 60
        if 17 <= hour < 22:
            wh += 130
        limit = int(self.meter.meter.st.get("limit", 0))
        return min(wh, limit * IVL // 3600) if limit else wh

    def reading(self, t: int, wh: int) -> bytes:
        self.seq += 1
        self.register += wh
        raw = P.sign1(self.key, P.reading(self.key.id, self.seq, t, IVL, self.register, 0, 0,
                                          self.prev))
        self.prev = P.digest(raw)
        return raw


class Stack:
    """The chain and the fog on one clock, each behind its HTTP API."""

    def __init__(self, out: Path, homes: list[Household], clock: SimTime,
                 fog_key: P.SigningKey) -> None:
        self.clock = clock
        data = out / "aggregator"
        self.dispatch_key = init_data_dir(data, int(clock()))
        self.ledger = open_ledger(data, clock)
        dispatcher = open_dispatcher(self.ledger, self.dispatch_key, data, clock)
        self.chain_api = AggregatorAPI(self.ledger, clock, dispatcher, ensure_token(data))
        self.chain_url = f"http://127.0.0.1:{self.chain_api.start('127.0.0.1', 0)}"
        self.client = ChainClient(self.chain_url)
        self.chain_id = bytes.fromhex(self.client.head()["chain"])
        feeders = [Feeder(f, tuple(h.key.id for h in homes if h.feeder == f))
                   for f in sorted({h.feeder for h in homes})]
        self.node = FogNode(FogConfig(data_dir=out / "fog", skew_s=10**9, feeders=feeders),
                            clock)
        self.fog_api = FogAPI(self.node, clock)
        self.fog_url = f"http://127.0.0.1:{self.fog_api.start()}"
        self.token_file = out / "fog" / "auditor.token"
        self.link = ChainLink(self.node, self.client, clock)
        self.net = MeterNet(self.node, homes)
        self.dispatcher = Dispatcher(self.node, self.link, self.net.send, clock)
        self.dr = FogDR(self.link, self.dispatcher, clock)
        self.link.on_step = self.dr.step
        self.faults = FaultReporter(self.link, lambda: self.dispatcher)
        self.scheduler = self.clockwork()
        assert self.node.key.id == fog_key.id

    def clockwork(self) -> Scheduler:
        """The fog's scheduler from the clock's time: closes, seals, faults, dispatch."""
        sched = Scheduler(self.node, self.clock, lambda cp: None)
        sched.faults, sched.dispatcher = self.faults, self.dispatcher
        return sched

    def sender(self, key: P.SigningKey) -> Sender:
        return Sender(self.client, key, self.chain_id)

    def send(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> bytes:
        return self.sender(key).send(kind, body, int(self.clock())).digest

    def close(self) -> None:
        self.fog_api.stop()
        self.dr.close()
        self.dispatcher.close()
        self.link.close()
        self.node.close()
        self.chain_api.stop()
        self.ledger.close()


@dataclass
class Cast:
    """Who signs what on the chain."""

    utility: P.SigningKey = field(default_factory=P.SigningKey.generate)
    regulator: P.SigningKey = field(default_factory=P.SigningKey.generate)
    operator: P.SigningKey = field(default_factory=P.SigningKey.generate)
    transformer: bytes = b"\x7f\x01" + b"\x00" * 6  # feeder f1's, an id the utility gave


class MeterNet:
    """The fog's commands to the meters' firmware and their signed results back to the
    fog's ingest (what the broker carries), delivered after each clockwork tick."""

    def __init__(self, node: FogNode, homes: list[Household]) -> None:
        self.node = node
        self.apps = {h.key.id: h.meter for h in homes}
        self.results: list[tuple[bytes, bytes]] = []

    def send(self, dev: bytes, msg: bytes) -> None:
        app = self.apps.get(dev)
        if app is not None:
            self.results.append((dev, app.command(msg)))

    def deliver(self) -> None:
        results, self.results = self.results, []
        if results:
            with self.node.lock:
                self.node.ingest.process([r for _, r in results], [d for d, _ in results])


def meter_app(d: Path, clock: SimTime, fog: P.SigningKey, seed: int) -> Any:
    """A meter's firmware (firmware/app.py on the host board): its key born at first start."""
    app_mod, hal = firmware.module("app"), firmware.module("hal.host")
    config = {"fog_pub": fog.public_key.raw.hex(), "source": "sim", "seed": seed}
    start = clock()
    board = hal.Board(dict(config, data_dir=str(d), clock=clock, sleep_ms=lambda ms: None,
                           ticks_ms=lambda: int((clock() - start) * 1000)))
    app = app_mod.App(board, config, None)
    app.start()
    return app


def households(n: int, out: Path, clock: SimTime, fog: P.SigningKey) -> list[Household]:
    return [Household(f"home-{i:02d}", (0xAC00 + i).to_bytes(8, "big"),
                      meter_app(out / "meters" / f"home-{i:02d}", clock, fog, i),
                      P.SigningKey.from_int(0x20_000 + i), "f1" if i < n // 2 else "f2",
                      rng=random.Random(i)) for i in range(n)]


def setup(s: Stack, cast: Cast, homes: list[Household], say: Callable[[str], None]) -> None:
    """Participants, the tariff with its two signatures, the market's points, the
    transformer's record: all before the history starts."""
    d = s.dispatch_key
    s.send(d, C.REGISTER, C.register_body("fog", s.node.key.public_key.raw, "district fog"))
    for role, key, name in (("utility", cast.utility, "City Power"),
                            ("regulator", cast.regulator, "Energy Regulator"),
                            ("operator", cast.operator, "Alice Zhang")):
        s.send(d, C.REGISTER, C.register_body(role, key.public_key.raw, name))
    for h in homes:
        s.send(d, C.REGISTER, C.register_body("market", h.party.public_key.raw, h.name))
        s.node.ingest.decide(h.key.public_key.raw, "active", "installed")
    start = BILLED - HISTORY_DAYS * DAY
    proposal = s.send(cast.utility, BL.BL_TARIFF, BL.tariff_body(
        "residential", 1, start, PERIODS, **TARIFF))
    s.send(cast.regulator, BL.BL_APPROVE, BL.approve_body("residential", 1, proposal))
    say(f"tariff residential v1 proposed by the utility and approved by the regulator "
        f"(tx {proposal.hex()[:16]})")
    s.send(d, GC.PARAMS, GC.params_body("market", 1, {}))
    s.send(d, MK.MK_NETWORK, MK.network_body(1, [("root", "", 10**9, 0),
                                                 ("f1", "root", 10**9, 0),
                                                 ("f2", "root", 10**9, 0)]))
    for h in homes:
        s.send(d, MK.MK_ENROLL, MK.enroll_body(h.party.id, s.node.key.id, h.key.id,
                                               h.feeder))
    say(f"{len(homes)} customers enrolled in the market: 100 points each")
    years = 365 * DAY
    s.send(cast.operator, DV.DV_REGISTER, DV.register_body(cast.transformer, DV.Nameplate(
        "transformer", "Acme Transformers", "AT-400", "AT400-1187", BILLED - 9 * years,
        BILLED - 8 * years, rated_v=10_000, rated_a=40, rated_w=400_000, phases=3,
        warranty_s=5 * years, maintain_s=2 * years)))
    s.send(cast.operator, DV.DV_STATUS, DV.status_body(cast.transformer, "installed",
                                                       "substation 7", "f1", s.node.key.id))
    say("transformer of f1 registered by operator Alice Zhang: commissioned 8 years ago, "
        "never maintained since (its interval is 2 years)")
    now = int(s.clock())
    ticket = s.send(cast.operator, DV.DV_TICKET, DV.ticket_body(
        cast.transformer, "switch_off", "inspect the tap changer", now + 60, now + DAY))
    try:
        s.send(cast.operator, DV.DV_EXECUTE, DV.execute_body(ticket))
    except ChainRefused as e:
        say(f"the operator's switch-off before the utility approved its ticket is refused: "
            f"{e.reason}")
    else:
        raise SystemExit("demo: the chain carried out an unapproved ticket")


def _interval(s: Stack, homes: list[Household], ivl: int,
              use: Callable[[Household, int], int | None]) -> None:
    """The meters' readings closing interval `ivl` (None: that meter is off), then the
    fog's clockwork at the close plus grace, its outage records and its anchor."""
    s.clock.t = ivl
    raws = []
    for h in homes:
        wh = use(h, ivl)
        if wh is not None:
            raws.append(h.reading(ivl, wh))
    if raws:
        with s.node.lock:
            s.node.ingest.process(raws)
    s.clock.t = ivl + s.node.config.grace_s
    s.scheduler.tick()
    s.faults.flush()
    s.link.step()  # anchors, and the DR module's round (fog_node.chainlink.dr)
    s.scheduler.dispatch()  # the commands it queued go out; their results come back
    s.net.deliver()


def simulate(s: Stack, homes: list[Household], first: int, last: int,
             use: Callable[[Household, int], int | None],
             at: Callable[[int], None] = lambda ivl: None) -> None:
    """Every interval ending in (first, last], `at` called after each."""
    for ivl in range(first + IVL, last + 1, IVL):
        _interval(s, homes, ivl, use)
        at(ivl)


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """A command's output, kept for the demo's summary."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def bill_all(s: Stack, homes: list[Household], out: Path, key_file: Path) -> list[Path]:
    """`meterledger bill run` for the billed day: a bill file per customer."""
    people = out / "customers.csv"
    people.write_text("# account,meter\n" + "".join(
        f"{h.account.hex()},{h.key.id.hex()}\n" for h in homes))
    with quiet():
        code = bill_main(["run", "--chain", s.chain_url, "--key", str(key_file), "--fog",
                          s.fog_url, "--fog-token-file", str(s.token_file), "--tariff",
                          "residential", "--start", str(BILLED), "--end", str(BILLED + DAY),
                          "--customers", str(people), "--out", str(out / "bills")])
    if code:
        raise SystemExit(f"demo: the billing run failed (exit {code})")
    return [out / "bills" / f"{h.account.hex()}-{BILLED}.json" for h in homes]


def verify_bills(s: Stack, bills: list[Path], out: Path) -> list[dict[str, Any]]:
    """Each bill's bundle through both APIs, then checked offline: the verdicts."""
    trust = s.dispatch_key.public_key.raw.hex()
    verdicts = []
    for path in bills:
        bundle = out / "bundles" / path.name
        bundle.parent.mkdir(exist_ok=True)
        with quiet():
            fetched = audit.main(["bill-bundle", "--fog", s.fog_url, "--chain", s.chain_url,
                                  "--bill", str(path), "-o", str(bundle), "--token-file",
                                  str(s.token_file)])
        with quiet() as buf:
            code = audit.main(["bill", str(bundle), "--trust", trust, "--format", "json"])
        verdicts.append({"bill": path.name, "fetched": fetched, "exit": code,
                         **(json.loads(buf.getvalue()) if code == 0 else {})})
    return verdicts


def write_key(path: Path, key: P.SigningKey) -> Path:
    path.write_text(key.private_bytes().hex() + "\n")
    path.chmod(0o600)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo_billing", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=20, choices=range(10, 201),
                    metavar="N", help="households, half on each feeder (10-200, default 20: "
                                      "a feeder of fewer than 5 is merged for privacy)")
    ap.add_argument("--out", type=Path, default=Path("demo-out/billing"),
                    help="where the data dirs, bills and bundles go (emptied first)")
    args = ap.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    try:
        run(args.out, args.customers)
        return 0
    except ChainClientError as e:  # a refusal the story did not expect: say which, once
        print(f"demo: the chain or the fog refused a step: {e}", file=sys.stderr)
        return 1


@dataclass
class Summary:
    """What the demo showed, for its test (tests/meterledger/test_demo_billing.py)."""

    bills: dict[str, dict[str, Any]] = field(default_factory=dict)  # home name -> its bill
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    dr_reports: list[dict[str, Any]] = field(default_factory=list)
    outage: dict[str, Any] = field(default_factory=dict)
    trace_exit: int = -1


def run(out: Path, n: int) -> Summary:
    """The whole story in `out` with `n` households; raises SystemExit naming a step that
    did not go as it must (a bill that does not verify among them)."""
    def say(text: str) -> None:
        print(f"demo: {text}", flush=True)

    clock = SimTime(BILLED - HISTORY_DAYS * DAY - 3600)
    fog_key = init_fog(out / "fog")
    homes, cast = households(n, out, clock, fog_key), Cast()
    keys = out / "keys"
    keys.mkdir()
    s = Stack(out, homes, clock, fog_key)
    summary = Summary()
    try:
        setup(s, cast, homes, say)
        # the meters' first readings open the history; the fog's clockwork starts with
        # them, so its first close is the history's first interval
        history = BILLED - HISTORY_DAYS * DAY
        clock.t = history
        with s.node.lock:
            s.node.ingest.process([h.reading(history, 0) for h in homes])
        s.scheduler = s.clockwork()
        story(s, cast, homes, out, keys, say, summary)
    finally:
        s.close()
    return summary


def story(s: Stack, cast: Cast, homes: list[Household], out: Path, keys: Path,
          say: Callable[[str], None], summary: Summary) -> None:
    """The history, the billed day, the bills and the trace (module doc)."""
    dr = DemandResponse(s, cast, homes, say)
    dr.setup()
    history = BILLED - HISTORY_DAYS * DAY
    simulate(s, homes, history, BILLED, lambda h, ivl: h.use(ivl))
    say(f"{HISTORY_DAYS} days of readings of {len(homes)} meters logged and anchored")

    def billed_day(h: Household, ivl: int) -> int | None:
        if h.feeder == "f1" and OUTAGE[0] < ivl <= OUTAGE[1]:
            return None  # no supply: the meter is off
        return h.use(ivl)

    def then(ivl: int) -> None:
        dr.step(ivl)
        if ivl == REDEEM_AT:
            dr.redeem(ivl)

    simulate(s, homes, BILLED, BILLED + DAY + IVL, billed_day, then)
    outages = s.client.billing_outages(homes[0].key.id.hex(), BILLED, BILLED + DAY)
    [record] = outages["outages"]
    summary.outage = record
    summary.dr_reports = s.client.dr_reports(DemandResponse.EVENT.hex())["reports"]
    say(f"the fog's closed outage record of f1 is on the chain: {len(homes) // 2} meters "
        f"from 18:00 to 20:00 (fault tx {record['fault'][:16]})")
    bills = bill_all(s, homes, out, write_key(keys / "utility.key", cast.utility))
    _interval(s, homes, BILLED + DAY + 2 * IVL, lambda h, ivl: h.use(ivl))  # anchor the rest
    verdicts = verify_bills(s, bills, out)
    report(homes, bills, verdicts, say)
    summary.verdicts = verdicts
    summary.bills = {h.name: json.loads(p.read_text()) for h, p in zip(homes, bills,
                                                                        strict=True)}
    summary.trace_exit = trace(s, cast, record["fault"], keys, say)
    bad = [v["bill"] for v in verdicts if v["exit"] != 0]
    if bad:
        raise SystemExit(f"demo: {len(bad)} bill(s) did not verify: {', '.join(bad)}")


def report(homes: list[Household], bills: list[Path], verdicts: list[dict[str, Any]],
           say: Callable[[str], None]) -> None:
    say("bills of the day, each verified offline from its bundle (readings, tariff, "
        "receipt, credits) and recomputed to the cent:")
    for h, path, v in zip(homes, bills, verdicts, strict=True):
        doc = json.loads(path.read_text())
        extra = {line[0]: line[3] for line in doc["lines"] if line[3] < 0}
        notes = ", ".join(f"{k} {c / 100:.2f}" for k, c in sorted(extra.items()))
        state = "verified" if v["exit"] == 0 else f"NOT VERIFIED (exit {v['exit']})"
        print(f"  {h.name} {h.feeder} account {h.account.hex()}: {doc['total'] / 100:7.2f} "
              f"({doc['intervals']} intervals{', ' + notes if notes else ''}) {state}")


def trace(s: Stack, cast: Cast, fault: str, keys: Path, say: Callable[[str], None]) -> int:
    """The outage determined for f1's transformer by the rule, and its timeline proven."""
    key = write_key(keys / "utility-trace.key", cast.utility)
    with quiet():
        code = trace_cli.main(["determine", cast.transformer.hex(), "--fault", fault,
                               "--chain", s.chain_url, "--key", str(key)])
    if code:
        raise SystemExit(f"demo: the determination was refused (exit {code})")
    say(f"the outage traced: `meterledger trace {cast.transformer.hex()}`")
    code = trace_cli.main(["show", cast.transformer.hex(), "--chain", s.chain_url,
                           "--trust", s.dispatch_key.public_key.raw.hex()])
    if code:
        raise SystemExit(f"demo: the transformer's timeline did not verify (exit {code})")
    return code


class DemandResponse:
    """The demand-response part of the story (docs/PROTOCOL.md section 30): the utility
    offers contracts to six customers on f2, who accept; one opts out of the evening event;
    the utility funds its points account and calls the event (17:00-18:00 on f2). The fog's
    DR module limits the meters under contract, restores them after, and reports each
    curtailment, which the chain pays in points; two customers redeem points against their
    bills that evening."""

    EVENT = b"\xd7" + bytes(7)
    SPAN = (BILLED + 17 * 3600, BILLED + 18 * 3600)

    def __init__(self, s: Stack, cast: Cast, homes: list[Household],
                 say: Callable[[str], None]) -> None:
        self.s, self.cast, self.say = s, cast, say
        self.members = [h for h in homes if h.feeder == "f2"][:6]
        self.fund = P.SigningKey.from_int(0xF0D)

    def setup(self) -> None:
        """Contracts offered and accepted, a preference, the utility's points, the event."""
        s, utility, now = self.s, self.cast.utility, int(self.s.clock())
        s.send(s.dispatch_key, C.REGISTER, C.register_body(
            "market", self.fund.public_key.raw, "community fund"))
        s.send(s.dispatch_key, MK.MK_ENROLL, MK.enroll_body(self.fund.id, s.node.key.id,
                                                           b"\xf0" * 8, "root"))
        s.send(self.fund, MK.MK_TRANSFER, {1: utility.id, 2: 100 * POINT})
        offers = []
        for h in self.members:
            offer = s.send(utility, DR.DR_OFFER, DR.offer_body(
                h.party.id, h.key.id, s.node.key.id, "f2", 30_000, 400, 150, [(0, 360)], 0,
                20_000, now, BILLED + 30 * DAY))
            s.send(h.party, DR.DR_ACCEPT, DR.accept_body(offer))
            offers.append(offer)
        s.send(utility, DR.DR_EVENT, DR.event_body(self.EVENT, 45_000, *self.SPAN,
                                                   [(s.node.key.id, "f2")], "evening peak"))
        s.send(self.members[-1].party, DR.DR_PREF, DR.pref_body(offers[-1], DR.SKIP_EVENT,
                                                               event=self.EVENT))
        self.say(f"demand response: {len(offers)} customers of f2 under contract (one opted "
                 "out of the event by a signed preference); the utility called an event "
                 "from 17:00 to 18:00 at 45 c/kWh")

    def step(self, ivl: int) -> None:
        """After each interval of the billed day: say what the fog did."""
        if ivl == self.SPAN[0] + IVL:
            limited = [h.name for h in self.members
                       if int(h.meter.meter.st.get("limit", 0))]
            self.say(f"17:15: the fog limited {len(limited)} meters ({', '.join(limited)})")

    def redeem(self, ivl: int) -> None:
        """The paid customers' points; two of them redeem 50 points against their bills."""
        s = self.s
        doc = s.client.dr_reports(self.EVENT.hex())
        paid = [r for r in doc["reports"] if r.get("paid")]
        self.say(f"the fog reported {len(doc['reports'])} meters of the event; the chain paid "
                 f"{len(paid)} of them {sum(int(r['paid']) for r in paid) / POINT:g} points "
                 "from the utility's account")
        for h in self.members[:2]:
            s.send(h.party, BL.BL_REDEEM, BL.redeem_body("residential", h.account, 50 * POINT))
        self.say(f"{self.members[0].name} and {self.members[1].name} redeemed 50 points each "
                 "against their bills")


if __name__ == "__main__":
    sys.exit(main())
