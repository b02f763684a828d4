"""The demo's green certificates and carbon allowances (docs/PROTOCOL.md sections 25 and 26),
in the production layout: the green-certificate (GC) chain is the demo's dispatch chain, the
carbon chain a second chain service (`python -m aggregator run` on --out/carbon), and two
notaries (`python -m aggregator.notary run`) relay each chain's records to the other. The fog
anchors its log to both (`registry_chains`) and signs type-14 energy statements for its two
generator meters (`generators`), the demo's last two virtual meters:

    pv-1    a PV plant (20 kWp behind a 9 kW inverter) whose owner gets a certificate per
            full `certificate_wh` of measured export on the GC chain
    coal-1  a coal unit (9 kW) whose emissions the carbon chain charges to its owner

Both are small: the fog's VEE checks every meter against one rating, a household meter's
13.8 kW (fog_node.cooking.vee.MeterRating: at most 3,795 Wh an interval), and an interval
above it is no measurement; 9 kW leaves room for a meter that closes its interval late on
the compressed clock (a real second is 300 s of it), whose reading then holds more than 15
minutes of energy. So certificate_wh is set to its lowest, 1,000 Wh (1 MWh in production),
and certificates are issued within the demo's first intervals.

Before the fog starts, the generator meters are provisioned (their keys made in their flash,
as flashing does), so the fog's `generators` setting can name them; the participants (a
registry, a regulator, the plant's owner, the coal unit's owner, a buyer; their keys made
here) are registered with each chain's dispatch key, and the applications enabled. After the
demo's bundle the plant's owner transfers a certificate to the buyer, who retires it; the
coal unit's emissions and the notaries' record are read from the carbon chain; and the
certificate is fetched and verified offline to its meter readings with `python -m
tools.audit certificate-bundle` and `python -m tools.audit certificate`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.chain.service.node import load_key
from hardware.firmware import module
from hardware.virtual_meter import VirtualClock, VirtualMeter, make_meter
from meterledger import wire as P
from meterledger.clients.chain import ChainClient, Receipt, Sender
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from tools.demo import Child, auditor_token, run_module

PV, COAL = "pv-1", "coal-1"
CERTIFICATE_WH = 1_000  # the lowest the chain takes (GC.MWH, 1 MWh, in production)
PV_WP, PV_AC_W, COAL_W = 20_000, 9_000, 9_000
YEAR = 1_798_761_600  # 2027-01-01 00:00 UTC: carbon period 0 (the demo's clock is in 2027)
COMMISSIONED = YEAR - 365 * 86_400  # both generators, a year before
BASELINE_WH = 50_000_000  # the coal unit's output the regulator allocates allowances for
BENEFICIARY, PURPOSE = "Example Bakery Ltd", "voluntary"
NOTARIES = 2  # the notaries application's threshold (its default): both must attest
PARTIES = (("registry", "registry"), ("regulator", "regulator"), ("pv-owner", "plant"),
           ("coal-owner", "plant"), ("buyer", "holder"))


class PlantSource:
    """A generator's registers, with a firmware source's calls (core/sources.py): export
    only, from a PV plant (a clear-sky day, clipped at its inverter) or a coal unit running
    flat; power is a function of time, energy integrated in mWh between reads."""

    name = "sim"

    def __init__(self, tech: str, seed: int) -> None:
        self.tech, self.seed = tech, seed
        self.exp_mwh = 0
        self.last_t: float | None = None

    def power(self, t: float) -> float:
        """Exported power at Unix time t, W."""
        wiggle = math.sin(t / 97.0 + self.seed)
        if self.tech == "coal":
            return COAL_W * (1.0 + 0.01 * wiggle)
        h = (t % 86_400) / 3600.0
        if not 6.0 < h < 18.0:
            return 0.0
        return min(PV_AC_W, PV_WP * 0.8 * math.sin(math.pi * (h - 6.0) / 12.0)
                   * (1.0 + 0.05 * wiggle))

    def read(self, now: float) -> Any:
        p = self.power(now)
        if self.last_t is not None and now > self.last_t:
            self.exp_mwh += int(p * (now - self.last_t) * 1000 / 3600)
        self.last_t = now
        v = 2300 + int(40 * math.sin(now / 300.0 + self.seed))
        return module("core.sources").Sample(0, self.exp_mwh // 1000, v, 0, int(p), 215)

    def state(self) -> dict[str, int]:
        return {"exp": self.exp_mwh}

    def restore(self, st: dict[str, Any]) -> None:
        self.exp_mwh = int(st.get("exp", self.exp_mwh))


@dataclass
class Chain:
    """One chain as the demo drives it: its API, its id and its operator's dispatch key."""

    name: str
    url: str
    client: ChainClient
    operator: P.SigningKey
    chain_id: bytes

    @classmethod
    def of(cls, name: str, url: str, data_dir: Path) -> Chain:
        client = ChainClient(url)
        return cls(name, url, client, load_key(data_dir), bytes.fromhex(client.head()["chain"]))

    def send(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> Receipt:
        """Sign a transaction with `key` (its next nonce) and submit it; ChainRefused if the
        chain refuses it."""
        return Sender(self.client, key, self.chain_id).send(kind, body, int(time.time()))

    def register(self, role: str, pub: bytes, name: str) -> None:
        self.send(self.operator, C.REGISTER, C.register_body(role, pub, name))

    def get(self, path: str) -> dict[str, Any]:
        return self.client.get(path)


def provision(flash: Path, fog_hex: str, fog_pub: str) -> str:
    """Make a meter's key in its flash as flashing does (provision.py, on the host), before
    the fog that must name it as a generator starts; the meter's id (hex)."""
    config = {"dur": 900, "fog": fog_hex, "fog_pub": fog_pub, "data_dir": str(flash)}
    _, mid = module("provision").provision(config, module("hal.host").Board(config))
    return str(mid)


class Green:
    """The GC chain (the demo's dispatch chain), the carbon chain, the notaries, the
    participants and the generator meters."""

    def __init__(self, out: Path, gc_dir: Path, gc_url: str, fog_hex: str, fog_pub: str,
                 first: int) -> None:
        self.out, self.gc_dir, self.gc_url = out, gc_dir, gc_url
        self.fog_hex, self.fog_pub = fog_hex, fog_pub
        self.first = first  # the index of the first generator meter among the demo's
        self.flash = {gid: out / "meters" / f"meter-{first + i:03d}"
                      for i, gid in enumerate((PV, COAL))}
        self.keys = {name: P.SigningKey.generate() for name, _ in PARTIES}
        self.meter_ids: dict[str, str] = {}
        self.notary_pubs: list[str] = []
        self.gc: Chain | None = None
        self.carbon: Chain | None = None

    # -- before the fog starts ----------------------------------------------------------------
    def start(self, token: str | None, children: list[Child]) -> None:
        """The carbon chain and the notaries' keys; the generator meters provisioned; every
        participant, application and generator on both chains; then the notaries."""
        cdir = self.out / "carbon"
        run_module(["aggregator", "init", "--data-dir", str(cdir), "--name", "carbon"])
        auditor_token(cdir, token)
        child = Child("carbon chain", ["aggregator", "run", "--data-dir", str(cdir),
                                       "--http-port", "0"], self.out / "carbon.log")
        children.append(child)
        for i in range(NOTARIES):
            pub = run_module(["aggregator.notary", "init", "--data-dir",
                              str(self.out / f"notary-{i + 1}")]).strip()
            self.notary_pubs.append(pub)
        self.meter_ids = {gid: provision(d, self.fog_hex, self.fog_pub)
                          for gid, d in self.flash.items()}
        url = child.wait_for(r"listening on (http://\S+)").group(1)
        self.gc = Chain.of("GC", self.gc_url, self.gc_dir)
        self.carbon = Chain.of("carbon", url, cdir)
        self._participants()
        self._applications()
        self._generators()
        for i in range(NOTARIES):
            n = Child(f"notary {i + 1}", [
                "aggregator.notary", "run", "--data-dir", str(self.out / f"notary-{i + 1}"),
                "--gc", self.gc.url, "--carbon", self.carbon.url, "--period-s", "0.5"],
                self.out / f"notary-{i + 1}.log")
            children.append(n)
            n.wait_for("relaying")
        self._say_started()

    def _chains(self) -> tuple[Chain, Chain]:
        assert self.gc is not None and self.carbon is not None, "start() first"
        return self.gc, self.carbon

    def _participants(self) -> None:
        gc, carbon = self._chains()
        carbon.register("fog", bytes.fromhex(self.fog_pub), "district-1")
        for name, role in PARTIES:
            pub = self.keys[name].public_key.raw
            if name != "coal-owner":
                gc.register(role, pub, name)
            if name != "buyer":
                carbon.register(role, pub, name)
        for i, notary in enumerate(self.notary_pubs):
            for chain in (gc, carbon):
                chain.register("notary", bytes.fromhex(notary), f"notary-{i + 1}")

    def _applications(self) -> None:
        gc, carbon = self._chains()
        for chain, peer in ((gc, carbon), (carbon, gc)):
            chain.send(chain.operator, GC.PARAMS, GC.params_body("notaries", 1, {
                "peer_chain": int.from_bytes(peer.chain_id, "big", signed=True),
                "threshold": NOTARIES}))
        gc.send(self.keys["registry"], GC.PARAMS, GC.params_body(
            "certificates", 1, {"certificate_wh": CERTIFICATE_WH}))
        carbon.send(self.keys["regulator"], GC.PARAMS, GC.params_body(
            "carbon", 1, {"start": YEAR}))

    def _generators(self) -> None:
        gc, carbon = self._chains()
        fog = bytes.fromhex(self.fog_hex)
        pv = (PV, "pv", PV_WP, COMMISSIONED, fog, bytes.fromhex(self.meter_ids[PV]),
              "certificates", self.keys["pv-owner"].id)
        coal = (COAL, "coal", COAL_W, COMMISSIONED, fog,
                bytes.fromhex(self.meter_ids[COAL]), "subsidy", self.keys["coal-owner"].id)
        registry = self.keys["registry"]
        gc.send(registry, GC.GENERATOR, GC.generator_body(*pv))
        for g in (pv, coal):
            carbon.send(registry, GC.GENERATOR, GC.generator_body(*g))
        carbon.send(self.keys["regulator"], CB.CB_ALLOCATE,
                    CB.allocate_body(COAL, 0, BASELINE_WH))

    def _say_started(self) -> None:
        _, carbon = self._chains()
        k = self.keys
        print(f"GC chain    the dispatch chain: certificates, 1 per {CERTIFICATE_WH:,} Wh of "
              f"measured export (lowered from 1 MWh, so that the demo issues some in minutes)")
        print(f"carbon      {carbon.url}: carbon allowances, period 0 is 2027; {NOTARIES} "
              f"notaries relay records between the two chains (docs/PROTOCOL.md section 26)")
        print(f"generators  {PV}: PV plant, {PV_WP // 1000} kWp, meter {self.meter_ids[PV]}, "
              f"owner {k['pv-owner'].id_hex}; {COAL}: coal unit, {COAL_W // 1000} kW, meter "
              f"{self.meter_ids[COAL]}, owner {k['coal-owner'].id_hex}; the fog states their "
              "energy to both chains")
        print(f"parties     registry {k['registry'].id_hex}, regulator "
              f"{k['regulator'].id_hex}, buyer {k['buyer'].id_hex}")

    def fog_settings(self) -> dict[str, str]:
        """The fog's settings (TOML values): its generator meters, the carbon chain."""
        _, carbon = self._chains()
        return {"generators": json.dumps([self.meter_ids[PV], self.meter_ids[COAL]]),
                "registry_chains": json.dumps([carbon.url])}

    def meters(self, clock: VirtualClock, config: dict[str, Any]) -> list[VirtualMeter]:
        """The generator meters, booted from the flash provisioned for them."""
        return [make_meter(self.first + i, d, clock, config,
                           source=PlantSource("coal" if gid == COAL else "pv", self.first + i))
                for i, (gid, d) in enumerate(self.flash.items())]

    # -- while the meters run -----------------------------------------------------------------
    def pending(self) -> str | None:
        """What the demo still waits for before the green part can be shown, or None."""
        gc, carbon = self._chains()
        certs = gc.client.certificates(generator=PV)["certificates"]
        if not certs:
            return f"a certificate of {PV} on the GC chain"
        out = carbon.get(f"/v1/carbon/generators/{COAL}")["output"]
        if not any(row["g"] for row in out):
            return f"{COAL}'s emissions charged on the carbon chain"
        if not carbon.get(f"/v1/notary/records/{CB.ISSUE}/{certs[0]['id']}")["applied"]:
            return f"the notaries' record of {certs[0]['id']} on the carbon chain"
        return None

    # -- after the demo's bundle ----------------------------------------------------------------
    def report(self, fog_url: str, fog_token: Path) -> None:
        """Certificates issued, one transferred and retired, the coal unit's emissions, the
        notaries' record, and the certificate verified offline to its meter readings."""
        cid = self._certificates()
        self._carbon(cid)
        self._audit(cid, fog_url, fog_token)

    def _certificates(self) -> str:
        gc, _ = self._chains()
        k = self.keys
        certs = gc.client.certificates(generator=PV, limit=1000)["certificates"]
        gen = next(g for g in gc.client.generators()["generators"] if g["id"] == PV)
        ids = [c["id"] for c in certs]
        shown = ", ".join(ids[:4]) + (f", ... ({len(ids) - 4} more)" if len(ids) > 4 else "")
        print(f"issued      {len(ids)} certificates to {PV}'s owner for "
              f"{gen['account']['certified']:,} Wh of measured export: {shown}")
        cid: str = ids[0]
        year = time.gmtime(certs[0]["first_ivl"]).tm_year
        r = gc.send(k["pv-owner"], GC.GC_TRANSFER, GC.transfer_body(cid, k["buyer"].id))
        print(f"transfer    {cid} from {PV}'s owner {k['pv-owner'].id_hex} to the buyer "
              f"{k['buyer'].id_hex} (block {r.height})")
        r = gc.send(k["buyer"], GC.GC_RETIRE, GC.retire_body(cid, BENEFICIARY, PURPOSE, year))
        cert = gc.client.certificate(cid)["certificate"]
        bal = gc.client.balance(k["buyer"].id_hex)
        print(f"retirement  {cid} {cert['state']} by the buyer (block {r.height}): beneficiary "
              f"{cert['retired']['beneficiary']!r}, purpose {cert['retired']['purpose']}, "
              f"year {cert['retired']['year']}; the buyer holds {bal['active']:,} Wh, "
              f"retired {bal['retired']:,} Wh")
        return cid

    def _carbon(self, cid: str) -> None:
        _, carbon = self._chains()
        owner = self.keys["coal-owner"].id_hex
        out = carbon.get(f"/v1/carbon/generators/{COAL}")["output"][0]
        acct = carbon.get(f"/v1/carbon/accounts/{owner}")["periods"][0]
        p = carbon.client.params()["carbon"]["effective"]
        print(f"emissions   {COAL} stated {out['wh']:,} Wh: {acct['emitted']:,} g CO2 charged "
              f"to its owner {owner} ({p['factor_coal'] / 1000:g} g/kWh) in period "
              f"{acct['period']}; allocated {acct['allocated']:,} g ({BASELINE_WH // 1000:,} "
              f"kWh baseline x {p['benchmark_coal'] / 1000:g} g/kWh), holds "
              f"{acct['balance']:,} g")
        rec = carbon.get(f"/v1/notary/records/{CB.ISSUE}/{cid}")
        certified = carbon.get(f"/v1/carbon/generators/{PV}")["certified"]
        wh = sum(int(row["wh"]) for row in certified)
        print(f"notaries    {CB.ISSUE}/{cid} took effect on the carbon chain, attested by "
              f"{len(rec['signers'])} notaries; so far {wh:,} Wh of {PV} certified as GC "
              "there, which no CCER claim can count again")

    def _audit(self, cid: str, fog_url: str, fog_token: Path) -> None:
        gc, _ = self._chains()
        path = self.out / "certificate.json"
        run_module(["tools.audit", "certificate-bundle", "--fog", fog_url, "--chain", gc.url,
                    "--certificate", cid, "-o", str(path), "--token-file", str(fog_token)])
        pub = (self.gc_dir / "dispatch.pub").read_text().strip()
        said = run_module(["tools.audit", "certificate", str(path), "--trust", pub]).strip()
        print(f"certificate {path} ({path.stat().st_size:,} bytes), `python -m tools.audit "
              f"certificate` (exit 0): {said}")

    def hints(self, hints: list[str]) -> list[str]:
        """The stack's hints (the last one its logs) with what to try on the green part
        while the demo keeps running."""
        gc, carbon = self._chains()
        *tries, logs = hints
        return [*tries, f"curl '{gc.url}/v1/certificates?generator={PV}'",
                f"curl {carbon.url}/v1/carbon/accounts/{self.keys['coal-owner'].id_hex}",
                f"{logs}; carbon chain {self.out}/carbon.log, notaries "
                f"{self.out}/notary-*.log"]
