"""The end-to-end demo (`make demo`): meters -> MQTT -> fog node -> dispatch chain -> bundle.

    python -m tools.demo [--meters 20] [--intervals 3] [--out demo-out] [--keep-running]
                         [--consortium]

Starts an MQTT broker (mosquitto when installed, secure: TLS with the fog's CA, passwords
and ACLs made by the fog; else the embedded amqtt broker, in lab mode), the
aggregator (`python -m aggregator`), a fog node (`python -m fog_node run`) registered on the
chain, and N virtual meters running the real firmware app, all on one compressed clock (a
15-minute interval every few seconds). It runs until at least `--intervals` interval closes
are anchored on the dispatch chain, prints a short table, builds one proof bundle and
verifies it offline, leaves demo-out/bundle.json and demo-out/dispatch.pub (hex) for anyone
to re-check with `python -m tools.audit verify`, stops everything cleanly and exits 0.
Each run starts from an empty --out directory.

On the embedded chain the last two of the meters are generators, a PV plant and a coal unit
(tools/demo_green.py, with 3 meters or more): the dispatch chain issues green certificates
for the plant's measured export, a second chain service (--out/carbon) charges the coal
unit's emissions, and two notaries relay records between the two (docs/PROTOCOL.md sections
25 and 26). The demo also waits for a certificate, the emissions and the notaries' record,
then prints them, transfers a certificate to a buyer who retires it, and verifies it offline
to its meter readings (demo-out/certificate.json, `python -m tools.audit certificate`).

With --consortium (`make demo-consortium`) the chain is a four-validator CometBFT network
instead of one aggregator (tools/demo_consortium.py): the demo writes it (`meterledger chain
testnet`) into --out/net (or a short folder under /tmp when that path is too long for a Unix
socket), starts it, registers the fog through the dispatch center's validator, links the fog
to another validator's API, and verifies the bundle against --out/genesis.json (the
validators) instead of the dispatch key; it also prints the validators' status and who
committed the anchor's block, and stops CometBFT before the validators' applications.

The fog's readings, devices and metrics and the chain's metrics are their APIs' auditor
tier: the demo reads them with the auditor.token of each data dir, which `init` makes, or
with the token of --token-file (or --token), which it writes into every data dir before the
services start, so that one token opens them all while the demo runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from fog_node.broker_access import BrokerAccess, hash_password
from fog_node.config import FogConfig
from fog_node.metrics import parse_metrics
from hardware.broker import EmbeddedBroker, Mosquitto, any_broker, free_port
from hardware.virtual_meter import VirtualClock, VirtualMeter, make_meter
from meterledger import errors
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.clients.fog import FogClient
from meterledger.infra import datadir
from meterledger.infra.args import ArgumentParser
from tools import audit

if TYPE_CHECKING:
    from tools.demo_green import Green

_ROOT = Path(__file__).resolve().parent.parent
COMPRESS = 300.0  # a 15-minute interval every 3 s of real time
START = 1_800_000_000 - 30  # virtual time: 30 s before an interval boundary


FOG, AGG = "meterledger_fog_", "meterledger_aggregator_"  # metric name prefixes


class DemoError(errors.MeterLedgerError, RuntimeError):
    pass


class Child:
    """A service in a child process, its output in a log file."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out: IO[bytes] = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=_ROOT,
                                     stdout=self._out, stderr=subprocess.STDOUT)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log.read_text(errors="replace"))
            if m:
                return m
            if self.proc.poll() is not None:
                raise DemoError(f"{self.name} exited with {self.proc.returncode}:\n"
                                f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        raise DemoError(f"{self.name} did not say {pattern!r} within {timeout:.0f} s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        return self.proc.returncode


def run_module(args: list[str]) -> str:
    out = subprocess.run([sys.executable, "-m", *args], cwd=_ROOT, capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise DemoError(f"python -m {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def anchored_intervals(chain: ChainClient, fog_hex: str, seen: dict[str, list[int]]) -> set[int]:
    """Interval ends (checkpoint ivl) that anchored checkpoints of this fog close."""
    for a in chain.anchors(fog_hex):
        if a["digest"] not in seen:
            tx = P.parse(bytes.fromhex(chain.tx(a["digest"])["tx"]))
            cps = [P.parse(c).fields for c in tx.fields[4][1]]
            seen[a["digest"]] = [f[7] for f in cps if 7 in f]
    return {i for ivls in seen.values() for i in ivls}


def broker_security(out: Path, fog_dir: Path, fog_hex: str) -> dict[str, str]:
    """The fog's broker settings (TOML values) for a mosquitto on a free loopback port that
    includes the fog's files, and those files written for it before it starts."""
    settings = {"mqtt_tls_port": str(free_port()), "broker_listen": '"127.0.0.1"',
                "broker_pid_file": f'"{out / "broker" / "mosquitto.pid"}"'}
    config = FogConfig(data_dir=fog_dir, mqtt_tls_port=int(settings["mqtt_tls_port"]),
                       broker_listen="127.0.0.1")
    BrokerAccess(config, fog_hex).write()
    return settings


def fog_broker(broker: Mosquitto | EmbeddedBroker, out: Path, fog_dir: Path, fog_hex: str
               ) -> tuple[Mosquitto | EmbeddedBroker, dict[str, str]]:
    """The broker the fog uses and the fog's settings (TOML values) for it: a mosquitto runs
    as in production (TLS, the fog's passwords and ACL, its files written first), the
    embedded amqtt broker in lab mode."""
    if not isinstance(broker, Mosquitto):
        return broker, {"mqtt_security": '"lab"', "mqtt_port": str(broker.port)}
    security = broker_security(out, fog_dir, fog_hex)
    return Mosquitto(out / "broker", port=int(security["mqtt_tls_port"]),
                     include_dir=fog_dir / "broker"), security


def auditor_token(data_dir: Path, token: str | None) -> str:
    """The data dir's auditor token: `token` written there first (0600) when given."""
    path = data_dir / "auditor.token"
    if token is not None:
        path.unlink(missing_ok=True)
        datadir.ensure_secret(path, "auditor token")  # a new file, mode 0600 ...
        path.write_text(token + "\n")  # ... then the given token in it
    return datadir.read_secret(path, "auditor token")


def meter_config(fog_dir: Path, fog_hex: str, fog_pub: str, port: int,
                 secure: bool) -> dict[str, Any]:
    """A virtual meter's firmware config for the fog on the broker at `port` (with the fog's
    broker CA pinned, as flashing does on a board, when the broker runs secure)."""
    config: dict[str, Any] = {"dur": 900, "source": "sim", "fog": fog_hex, "fog_pub": fog_pub,
                              "transport": "mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": port}
    if secure:
        config["mqtt_ca"] = (fog_dir / "broker" / "ca.crt").read_text()
    return config


def enroll_meters(out: Path, fog_dir: Path, meters: list[VirtualMeter], secure: bool) -> None:
    """Enroll the meters in the fog from what flashing hands it: each meter's key, and its
    broker password's hash when the broker runs secure."""
    provisioning = out / "provisioning.json"
    provisioning.write_text(json.dumps({"meters": [
        {"pub": bytes(vm.app.meter.key.pub).hex()}
        | ({"mqtt_hash": hash_password(vm.mqtt_secret)} if secure else {})
        for vm in meters]}))
    run_module(["fog_node", "enroll", "--data-dir", str(fog_dir), "--file", str(provisioning)])


def register_fog(data_dir: Path, url: str, fog_pub: str) -> None:
    """Register the fog on the chain at `url`, signed by the dispatch key of `data_dir`."""
    run_module(["aggregator", "register", "--data-dir", str(data_dir), "--role", "fog",
          "--pub", fog_pub, "--name", "district-1", "--chain", url])


class ChainStack(Protocol):
    """The dispatch chain the demo runs: the embedded one (one aggregator) or a consortium
    (tools/demo_consortium.py). `url` is the API the fog links to, `token` its auditor token."""

    url: str
    token: str
    dispatch_pub: str

    def start(self, token: str | None) -> None: ...
    def register(self, fog_pub: str) -> None: ...
    def rules(self, file: Path) -> None: ...
    def report(self) -> None: ...
    def verify(self, bundle: Path) -> tuple[audit.Verified, list[str]]: ...
    def recheck(self) -> str: ...
    def hints(self) -> list[str]: ...
    def stop(self) -> dict[str, int]: ...


class Embedded:
    """The embedded chain: one aggregator (`python -m aggregator run`) whose dispatch key
    seals every block."""

    def __init__(self, out: Path) -> None:
        self.out, self.dir = out, out / "chain"
        self.child: Child | None = None
        self.url = self.token = self.dispatch_pub = ""

    def start(self, token: str | None) -> None:
        run_module(["aggregator", "init", "--data-dir", str(self.dir)])
        self.token = auditor_token(self.dir, token)
        self.child = Child("aggregator", ["aggregator", "run", "--data-dir", str(self.dir),
                                          "--http-port", "0"], self.out / "aggregator.log")
        self.url = self.child.wait_for(r"listening on (http://\S+)").group(1)
        self.dispatch_pub = (self.dir / "dispatch.pub").read_text().strip()
        print(f"aggregator  {self.url} (dispatch key "
              f"{P.party_id(bytes.fromhex(self.dispatch_pub)).hex()})")

    def register(self, fog_pub: str) -> None:
        register_fog(self.dir, self.url, fog_pub)

    def rules(self, file: Path) -> None:
        out = run_module(["aggregator", "rules", "register", str(file), "--data-dir", str(self.dir),
                    "--chain", self.url])
        print(f"rules       {file} registered: {out.strip().splitlines()[-1]}")

    def report(self) -> None:
        """Nothing to add to the table: one node seals."""

    def verify(self, bundle: Path) -> tuple[audit.Verified, list[str]]:
        """The bundle verified offline, and lines to print after saying so (none here)."""
        (self.out / "dispatch.pub").write_text(self.dispatch_pub + "\n")
        return audit.verify_bundle(json.loads(bundle.read_text()),
                                   [P.PublicKey(bytes.fromhex(self.dispatch_pub))]), []

    def recheck(self) -> str:
        return f"--trust $(cat {self.out}/dispatch.pub)"

    def hints(self) -> list[str]:
        return [f"curl {self.url}/v1/head",
                f".venv/bin/meterledger chain verify-chain --chain {self.url} --pub "
                f"$(cat {self.out}/dispatch.pub)",
                f"logs: {self.out}/fog.log, {self.out}/aggregator.log, {self.out}/broker/; "
                f"chain data {self.dir}"]

    def stop(self) -> dict[str, int]:
        return {} if self.child is None else {self.child.name: self.child.stop()}


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop as Ctrl-C does, through every `finally`


# long: the demo's steps in the order a user sees them printed
def demo(out: Path, n_meters: int, intervals: int, timeout_s: float,
         broker_kind: str = "auto", token: str | None = None, keep_running: bool = False,
         consortium: bool = False, rules: Path | None = None) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    children: list[Child] = []
    meters: list[VirtualMeter] = []
    green: Green | None = None
    broker: Mosquitto | EmbeddedBroker = {
        "auto": any_broker, "mosquitto": Mosquitto, "amqtt": EmbeddedBroker}[broker_kind](
            out / "broker")
    if consortium:
        from tools.demo_consortium import Consortium

        stack: ChainStack = Consortium(out)
    else:
        stack = Embedded(out)
    # mosquitto runs secure, as in production (docs/PROTOCOL.md section 21): the fog's TLS
    # listener, passwords and ACL; the embedded amqtt broker runs in lab mode
    secure = isinstance(broker, Mosquitto)
    fog_dir = out / "fog"
    on_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        fog_out = run_module(["fog_node", "init", "--data-dir", str(fog_dir)])  # with the broker's CA
        fog_hex = re.search(r"fog id ([0-9a-f]{16})", fog_out).group(1)  # type: ignore[union-attr]
        fog_pub = re.search(r"fog pub ([0-9a-f]{130})", fog_out).group(1)  # type: ignore[union-attr]
        broker, security = fog_broker(broker, out, fog_dir, fog_hex)
        broker.start()
        kind = "mosquitto (TLS, passwords, ACL)" if secure else "amqtt (embedded), lab mode"
        print(f"broker      {kind} on 127.0.0.1:{broker.port}")

        stack.start(token)
        chain_url, dispatch_pub = stack.url, stack.dispatch_pub
        fog_token = auditor_token(fog_dir, token)
        stack.register(fog_pub)
        if rules is not None:  # the dispatcher's rule set: suggestions to approve
            stack.rules(rules)
        if isinstance(stack, Embedded) and n_meters >= 3:  # its last two meters: generators
            from tools import demo_green

            green = demo_green.Green(out, stack.dir, chain_url, fog_hex, fog_pub, n_meters - 2)
            green.start(token, children)
        elif isinstance(stack, Embedded):
            print("green       no generator meters with fewer than 3 meters: no green "
                  "certificates or carbon allowances")

        epoch = time.time() + 1.0  # the shared simulated clock reads START then
        http_port = free_port()
        (out / "fog.toml").write_text("\n".join([
            "[fog]", f'data_dir = "{fog_dir}"', *(f"{k} = {v}" for k, v in security.items()),
            *(f"{k} = {v}" for k, v in (green.fog_settings() if green else {}).items()),
            f"http_port = {http_port}", f'chain_url = "{chain_url}"', "seal_period_s = 5.0",
            "interval_s = 900",
            # a real second of grace: 20 meters signing in pure-Python P-256 take about that
            "grace_s = 300", "skew_s = 900", "anchor_period_s = 300",
            "chain_poll_s = 0.5", f'dispatch_pub = "{dispatch_pub}"',
            f"sim_compress = {COMPRESS}", f"sim_start = {START}", f"sim_epoch = {epoch}", ""]))
        fog = Child("fog node", ["fog_node", "run", "--config", str(out / "fog.toml")],
                    out / "fog.log")
        children.append(fog)
        fog.wait_for(r"running: mqtt")
        clock = VirtualClock(START, COMPRESS, time.time, t0=epoch)
        config = meter_config(fog_dir, fog_hex, fog_pub, broker.port, secure)
        meters = [make_meter(i, out / "meters" / f"meter-{i:03d}", clock, config)
                  for i in range(n_meters - 2 if green else n_meters)]
        meters += green.meters(clock, config) if green else []
        enroll_meters(out, fog_dir, meters, secure)

        fog_url = f"http://127.0.0.1:{http_port}"
        kinds = f" ({n_meters - 2} households, a PV plant, a coal unit)" if green else ""
        print(f"fog node    {fog_url} (id {fog_hex}), {n_meters} virtual meters{kinds}, "
              f"time x{COMPRESS:.0f}")
        print(f"dashboards  {fog_url}/ui/ (the fog), {chain_url}/ui/ (the chain)")

        chain = ChainClient(chain_url)
        seen, closed = run_meters(meters, chain, fog_hex, intervals, timeout_s, out,
                                  green.pending if green else None)

        fog_api = FogClient(fog_url, token=fog_token)
        m = parse_metrics(fog_api_text(fog_url, fog_token))
        cp = fog_api.checkpoint()
        chain_m = parse_metrics(fog_api_text(chain_url, stack.token))
        rejected = sum(v for k, v in m.items() if k.startswith(FOG + "rejected_total{"))
        rejected += sum(v for k, v in chain_m.items() if k.startswith(AGG + "rejected_total{"))
        readings = sum(len(vm.readings) for vm in meters)
        print()
        print(f"{'meters':>8} {'readings':>9} {'logged':>7} {'checkpoints':>12} {'anchors':>8} "
              f"{'intervals':>10} {'rejected':>9}")
        print(f"{n_meters:>8} {readings:>9} {int(m.get(FOG + 'accepted_total', 0)):>7} "
              f"{cp['height']:>12} {len(seen):>8} {len(closed):>10} {int(rejected):>9}")
        print()
        stack.report()

        dev = bytes(meters[0].app.meter.id)
        bundle = audit.build_bundle(fog_api, chain, dev, 1)
        (out / "bundle.json").write_text(json.dumps(bundle, indent=1) + "\n")
        r, more = stack.verify(out / "bundle.json")
        how = "" if r.engine == "embedded" else f" committed by {r.sealer}"
        print(f"bundle      {out}/bundle.json ({(out / 'bundle.json').stat().st_size:,} bytes) "
              f"verified offline: meter {r.dev} seq {r.seq} is entry {r.leaf_index} of the "
              f"fog's log, anchored in block {r.block_height}{how}")
        for line in more:
            print(line)
        print(f"re-check:   python -m tools.audit verify {out}/bundle.json {stack.recheck()}")
        hints = stack.hints()
        if green:
            green.report(fog_url, fog_dir / "auditor.token")
            hints = green.hints(hints)
        if keep_running:
            live(meters, fog_url, fog_dir, hints)
    finally:
        # stopping is not interrupted: a second Ctrl-C would leave processes behind
        on_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for vm in meters:
                vm.app.transport.close()
            codes = {c.name: c.stop() for c in reversed(children)}
            codes.update(stack.stop())
            broker.stop()
        finally:
            signal.signal(signal.SIGINT, on_int)
            signal.signal(signal.SIGTERM, on_term)
    unclean = {k: v for k, v in codes.items() if v != 0}
    if unclean:
        raise DemoError(f"not stopped cleanly: {unclean}")
    print("stopped cleanly")
    return 0


def run_meters(meters: list[VirtualMeter], chain: ChainClient, fog_hex: str, intervals: int,
               timeout_s: float, out: Path, pending: Callable[[], str | None] | None = None,
               ) -> tuple[dict[str, list[int]], set[int]]:
    """Step the meters until `intervals` interval closes holding readings are anchored and
    every meter has made that many readings, and `pending` (what else the demo waits for)
    says None; the anchors seen (digest -> interval ends) and those closes."""
    seen: dict[str, list[int]] = {}
    deadline = time.monotonic() + timeout_s
    next_check = 0.0
    closed: set[int] = set()
    waiting: str | None = "the first check"
    while len(closed) < intervals or any(len(vm.readings) < intervals for vm in meters) \
            or waiting is not None:
        if time.monotonic() > deadline:
            if waiting is None or len(closed) < intervals:
                raise DemoError(f"only {len(closed)} of {intervals} interval closes anchored "
                                f"within {timeout_s:.0f} s; see {out}/*.log")
            raise DemoError(f"still waiting for {waiting} after {timeout_s:.0f} s; see "
                            f"{out}/*.log")
        for vm in meters:
            vm.app.step()
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 0.5
            closed = closes(meters, chain, fog_hex, seen)
            waiting = pending() if pending is not None and len(closed) >= intervals else None
        time.sleep(0.01)
    return seen, closed


def closes(meters: list[VirtualMeter], chain: ChainClient, fog_hex: str,
           seen: dict[str, list[int]]) -> set[int]:
    """The anchored interval closes that hold readings: the meters' first reading ends the
    first of them."""
    firsts = [P.parse(vm.readings[0]).fields[3] for vm in meters if vm.readings]
    if not firsts:
        return set()
    return {i for i in anchored_intervals(chain, fog_hex, seen) if i >= min(firsts)}


def live(meters: list[VirtualMeter], fog_url: str, fog_dir: Path, hints: list[str]) -> None:
    """Keep the stack running, meters and all, until Ctrl-C or SIGTERM, and say what there
    is to look at."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    auditor = f'-H "Authorization: Bearer $(cat {fog_dir}/auditor.token)"'
    *tries, logs = hints
    lines = "\n".join(f"  {t}" for t in tries)
    print(f"""
running until Ctrl-C; try (from another terminal):
  curl {fog_url}/v1/checkpoint
  curl {auditor} {fog_url}/v1/devices
  curl {auditor} {fog_url}/metrics
{lines}
  .venv/bin/meterledger fog devices --url {fog_url} --data-dir {fog_dir}
{logs}""", flush=True)
    try:
        while not stop:
            for vm in meters:
                vm.app.step()
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    print("stopping", flush=True)


def fog_api_text(base: str, token: str) -> str:
    """GET /metrics of a service (its auditor tier) as text."""
    import urllib.request

    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def main(argv: list[str] | None = None, prog: str = "python -m tools.demo") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=20, help="virtual meters (default: 20)")
    ap.add_argument("--intervals", type=int, default=3,
                    help="interval closes to see anchored before stopping (default: 3)")
    ap.add_argument("--out", type=Path, default=Path("demo-out"),
                    help="directory for the data dirs, logs and the bundle; emptied first")
    ap.add_argument("--timeout", type=float, default=180.0, help="give up after this many s")
    ap.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto",
                    help="auto: mosquitto when installed, else the embedded amqtt broker")
    ap.add_argument("--keep-running", action="store_true",
                    help="after the bundle, keep the stack (broker, chain, fog, meters) running "
                         "until Ctrl-C, to explore its APIs and logs (make demo-live)")
    ap.add_argument("--consortium", action="store_true",
                    help="run the chain as a four-validator CometBFT network (make "
                         "demo-consortium) instead of the embedded one; needs `make setup`")
    ap.add_argument("--rules", type=Path, metavar="FILE",
                    help="register this rule file on the chain, so the dispatcher suggests "
                         "(docs/examples/rules-lab.toml suggests every interval)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--token-file", type=Path, metavar="FILE",
                   help="file holding the auditor token the demo gives the fog and the chain "
                        "(default: the random ones init makes, in --out's data dirs)")
    g.add_argument("--token", metavar="TOKEN",
                   help="the auditor token itself (visible in the process list: prefer "
                        "--token-file)")
    args = ap.parse_args(argv)
    try:
        token = audit.read_token(args.token, args.token_file)
        if token is not None and len(token) < 16:
            raise errors.ConfigError("the auditor token must have at least 16 characters")
        if args.rules is not None and not args.rules.is_file():
            raise errors.ConfigError(f"--rules {args.rules}: no such file")
    except errors.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return demo(args.out.resolve(), args.meters, args.intervals, args.timeout, args.broker,
                    token, args.keep_running, args.consortium,
                    args.rules.resolve() if args.rules else None)
    except errors.MeterLedgerError as e:  # DemoError, BundleError, ChainClientError, ...
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted; everything it started is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
