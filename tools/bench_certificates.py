"""Green-certificate issuance on the chain: certificates per second through anchors, and
bytes on the chain per MWh certified, measured in one run.

    python -m tools.bench_certificates [--fogs 4] [--generators 20] [--intervals 48] [--quick]

Two plant sizes, each at full output for every 15-minute interval: a 10 MW PV plant (2.5 MWh
per type-14 energy statement, so 2.5 certificates of 1 MWh) and a 100 kW one (25 kWh per
statement, one certificate per 40 statements). For each, `fogs` fog nodes (real fog_node
log and signed checkpoints) each measure `generators` plants; at every interval close a fog
logs one reading per plant meter (a placeholder entry: the chain never reads the log), then
its statements in chunks of 10 with a checkpoint sealed after each, as fog_node.cooking
does, and anchors them with fog_node's own build_anchor (as many checkpoints, and their
statements, as fit a 4096-byte transaction). Every anchor is built and signed before any
timing starts.

Each plant size runs on two fresh chains (a real embedded ledger, sealed and signed blocks,
on a SQLite store in a temp dir; the certificates application enabled, the same generators
registered): the baseline receives the same anchors (same checkpoints, same proofs) without
their statements, the other receives them with their statements, so they issue
certificates. The fogs submit from one thread each, in nonce order, as fogs would. Measured:

- the time to take every anchor, both ways: their ratio is what issuance costs per anchor;
  certificates and statements per second; and the real-time budget: every plant states once
  per 900 s, so statements/s x 900 is how many plants of that size one chain keeps up with.
- bytes on the chain per MWh certified: the statements' bytes in the anchors (anchor with
  statements minus the same anchor without) and, as an upper bound, the whole anchors.
- stored bytes: per certificate, its own records (gc.cert and its owner index); per MWh
  certified (1 MWh = 1 certificate), every application record issuance wrote (statements
  stated, accounts, segments, certificates, balances), and the growth of the SQLite files
  against the baseline chain's.

Block headers are not counted; a real fog also carries its feeders' aggregates (not here).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.backends.embedded import EmbeddedLedger, create_genesis
from aggregator.chain.store import SQLiteBlockStore
from fog_node.chainlink.link import build_anchor
from fog_node.log.checkpoints import Checkpoint, Checkpoints
from fog_node.log.store import MemoryLogStore
from meterledger import wire as P
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire.cbor import encode

T0 = 1_800_000_000
IVL = 900
FIRST_IVL = T0 - T0 % IVL + IVL
CHUNK = 10  # statements logged between two checkpoints (fog_node.cooking.statements)
OPERATOR = P.SigningKey.from_int(0x0BE)
REGISTRY = P.SigningKey.from_int(0x4E6)
PLANT = P.SigningKey.from_int(0x91A)
# name -> (capacity W, Wh exported in one interval at full output)
PLANTS = {"10 MW PV": (10_000_000, 2_500_000), "100 kW PV": (100_000, 25_000)}
ISSUANCE_TABLES = (G.T_STATED, G.T_ACCOUNT, G.T_SEGMENT, G.T_CERT, G.T_OWNED, G.T_BALANCE)


@dataclass
class Anchors:
    """One fog's anchors in submission order: with their statements, and the baseline."""

    fog: P.SigningKey
    meters: list[bytes]
    with_statements: list[bytes] = field(default_factory=list)
    baseline: list[bytes] = field(default_factory=list)
    statements: int = 0


class BenchFog:
    """A fog that measures generator meters: its log, checkpoints and statements."""

    def __init__(self, n: int, generators: int) -> None:
        self.key = P.SigningKey.from_int(0xF0_0000 + n)
        self.meters = [(0xA0_0000 + 1000 * n + g).to_bytes(8, "big") for g in range(generators)]
        self.log = MemoryLogStore()
        self.cps = Checkpoints(":memory:", self.key, self.log)
        self.last_reading: dict[bytes, int] = {}
        self.stated: list[tuple[int, bytes]] = []  # (log index, statement), in log order
        self.head: Checkpoint | None = None
        self.carried = 0  # checkpoints the last anchor carried
        self.out = Anchors(self.key, self.meters)

    def statements_in(self, lo: int, hi: int) -> list[bytes]:
        return [raw for leaf, raw in self.stated if lo <= leaf < hi]

    def readings(self, t: int) -> None:
        size = self.log.size()
        self.log.append_batch([b"reading of %s at %d" % (m.hex().encode(), t)
                               for m in self.meters])
        for i, m in enumerate(self.meters):
            self.last_reading[m] = size + i

    def close(self, ivl: int, exp: int) -> None:
        """One interval close: the readings at ivl, the statements in chunks (a checkpoint
        after each), and the anchors carrying them, with and without their statements."""
        first = (self.head.height + 1) if self.head else 1
        before = dict(self.last_reading)
        self.readings(ivl)
        self.cps.seal(ivl + 10)
        for c in range(0, len(self.meters), CHUNK):
            size = self.log.size()
            chunk = [P.sign1(self.key, {0: P.STATEMENT, 1: m, 2: ivl, 3: IVL, 4: 0, 5: exp,
                                        6: 0, 7: [before[m], self.last_reading[m]], 8: size,
                                        17: self.key.id})
                     for m in self.meters[c:c + CHUNK]]
            self.log.append_batch(chunk)
            self.stated += [(size + i, raw) for i, raw in enumerate(chunk)]
            self.cps.seal(ivl + 60, force=True)
        latest = self.cps.latest()
        assert latest is not None
        pending = [cp for h in range(first, latest.height + 1) if (cp := self.cps.at_height(h))]
        while pending:
            self.anchor(pending, ivl + 60)
            pending = pending[self.carried:]

    def anchor(self, cps: list[Checkpoint], now: int) -> None:
        nonce = len(self.out.baseline) + 1
        raw, n = build_anchor(self.key, OPERATOR.id, nonce, self.head, cps, self.log, now,
                              statements=self.statements_in)
        base, m = build_anchor(self.key, OPERATOR.id, nonce, self.head, cps[:n], self.log, now)
        assert m == n, "the baseline carries the same checkpoints"
        self.out.with_statements.append(raw)
        self.out.baseline.append(base)
        self.out.statements += len(P.parse(raw).fields[4].get(4, []))
        self.head = cps[n - 1]
        self.carried = n

    def done(self) -> Anchors:
        self.cps.close()
        self.log.close()
        return self.out


def build(fogs: int, generators: int, intervals: int, exp: int) -> list[Anchors]:
    """Every fog's anchors for `intervals` closes, each plant exporting `exp` Wh in each."""
    out = []
    for n in range(fogs):
        fog = BenchFog(n, generators)
        fog.readings(FIRST_IVL - IVL)  # the readings the first interval starts from
        for i in range(intervals):
            fog.close(FIRST_IVL + IVL * i, exp)
        out.append(fog.done())
        assert out[-1].statements == generators * intervals, "every statement anchored"
    return out


class Chain:
    """An embedded chain on SQLite with the certificates application and the plants'
    generators registered."""

    def __init__(self, path: Path, fogs: list[Anchors], capacity_w: int) -> None:
        self.path = path
        self.store = SQLiteBlockStore(path)
        create_genesis(self.store, OPERATOR, T0)
        self.ledger = EmbeddedLedger(self.store, OPERATOR, lambda: float(T0 + 5))
        for role, key in [("registry", REGISTRY), ("plant", PLANT)] + \
                [("fog", f.fog) for f in fogs]:
            self.send(OPERATOR, C.REGISTER, C.register_body(role, key.public_key.raw, role))
        self.send(REGISTRY, GC.PARAMS, GC.params_body("certificates", 1, {}))
        for n, f in enumerate(fogs):
            for g, meter in enumerate(f.meters):
                self.send(REGISTRY, GC.GENERATOR, GC.generator_body(
                    f"pv-{n}-{g}", "pv", capacity_w, T0 - 86_400, f.fog.id, meter,
                    "certificates", PLANT.id))

    def send(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> None:
        p = self.ledger.participant(key.id)
        nonce = (p.nonce if p is not None else 0) + 1
        self.ledger.submit(P.sign1(key, C.tx(key.id, nonce, kind, body, T0, OPERATOR.id)))

    def take(self, per_fog: list[list[bytes]]) -> float:
        """Seconds to take every fog's anchors, each fog submitting from its own thread."""
        def fog(anchors: list[bytes]) -> None:
            for raw in anchors:
                self.ledger.submit(raw)

        start = time.perf_counter()
        with ThreadPoolExecutor(len(per_fog)) as pool:
            list(pool.map(fog, per_fog))
        return time.perf_counter() - start

    def issued(self) -> dict[str, int]:
        """Wh certified and issued, certificates, and the issuance records' bytes."""
        accounts = [v for _, v in self.store.records(G.T_ACCOUNT)]
        size = {t: sum(len(k) + len(encode(v)) for k, v in self.store.records(t))
                for t in ISSUANCE_TABLES}
        return {"certified": sum(a["certified"] for a in accounts),
                "issued": sum(a["issued"] for a in accounts),
                "certs": len(self.store.records(G.T_CERT)),
                "cert_bytes": size[G.T_CERT] + size[G.T_OWNED],
                "record_bytes": sum(size.values())}

    def close(self) -> int:
        """Close the chain; the bytes of its SQLite files."""
        self.ledger.close()
        self.store.close()
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))


def run(plant: str, fogs: int, generators: int, intervals: int, root: Path) -> dict[str, float]:
    capacity_w, exp = PLANTS[plant]
    anchors = build(fogs, generators, intervals, exp)
    tag = plant.split()[0] + plant.split()[1]
    base = Chain(root / f"base-{tag}.db", anchors, capacity_w)
    base_s = base.take([a.baseline for a in anchors])
    assert base.issued()["certified"] == 0
    base_file = base.close()
    chain = Chain(root / f"gc-{tag}.db", anchors, capacity_w)
    try:
        gc_s = chain.take([a.with_statements for a in anchors])
        got = chain.issued()
    finally:
        gc_file = chain.close()
    statements = sum(a.statements for a in anchors)
    assert got["certified"] == statements * exp, "every statement certified"
    assert got["issued"] == got["certs"] * GC.MWH
    n_anchors = sum(len(a.baseline) for a in anchors)
    gc_bytes = sum(len(r) for a in anchors for r in a.with_statements)
    base_bytes = sum(len(r) for a in anchors for r in a.baseline)
    mwh = got["certified"] / GC.MWH
    return {"anchors": n_anchors, "statements": statements, "certs": got["certs"], "mwh": mwh,
            "base_s": base_s, "gc_s": gc_s, "cost": gc_s / base_s,
            "base_rate": n_anchors / base_s, "gc_rate": n_anchors / gc_s,
            "certs_s": got["certs"] / gc_s, "mwh_s": mwh / gc_s,
            "statements_s": statements / gc_s, "plants": statements / gc_s * IVL,
            "st_bytes_mwh": (gc_bytes - base_bytes) / mwh, "anchor_bytes_mwh": gc_bytes / mwh,
            "st_bytes": (gc_bytes - base_bytes) / statements,
            "cert_bytes": got["cert_bytes"] / got["certs"] if got["certs"] else float("nan"),
            "record_bytes_mwh": got["record_bytes"] / mwh,
            "file_bytes_mwh": (gc_file - base_file) / mwh}


def report(rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{'plant':<10} {'anchors':>7} {'stmts':>6} {'certs':>6} {'MWh':>8} "
          f"{'base anc/s':>10} {'stmt anc/s':>10} {'cost':>6} {'certs/s':>8} {'MWh/s':>7} "
          f"{'stmts/s':>8} {'plants@900s':>11}")
    for name, r in rows.items():
        print(f"{name:<10} {r['anchors']:>7.0f} {r['statements']:>6.0f} {r['certs']:>6.0f} "
              f"{r['mwh']:>8.1f} {r['base_rate']:>10.1f} {r['gc_rate']:>10.1f} "
              f"{r['cost']:>5.2f}x {r['certs_s']:>8.1f} {r['mwh_s']:>7.1f} "
              f"{r['statements_s']:>8.1f} {r['plants']:>11,.0f}")
    print("(cost: time to take the anchors with their statements / the same anchors without;"
          "\n plants@900s: plants of that size one chain keeps up with, one statement each per"
          " 15 min)")
    print(f"\n{'plant':<10} {'B/stmt':>7} {'stmt B/MWh':>10} {'anchor B/MWh':>12} "
          f"{'cert rec B/cert':>15} {'all rec B/MWh':>13} {'file B/MWh':>10}")
    for name, r in rows.items():
        cert = f"{r['cert_bytes']:,.0f}" if r["certs"] else "-"
        print(f"{name:<10} {r['st_bytes']:>7.0f} {r['st_bytes_mwh']:>10,.0f} "
              f"{r['anchor_bytes_mwh']:>12,.0f} {cert:>15} "
              f"{r['record_bytes_mwh']:>13,.0f} {r['file_bytes_mwh']:>10,.0f}")
    print("(stmt B: anchor bytes with statements minus the same anchors without; anchor B: the "
          "whole anchors;\n cert rec: a certificate's records (gc.cert, gc.owned); all rec: "
          "every record issuance wrote,\n key and CBOR value; file: SQLite growth over the "
          "baseline chain's; 1 MWh = 1 certificate)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_certificates", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fogs", type=int, default=4,
                    help="fog nodes, each submitting its anchors from its own thread (4)")
    ap.add_argument("--generators", type=int, default=20,
                    help="plants (generator meters) each fog measures (20)")
    ap.add_argument("--intervals", type=int, default=48,
                    help="15-minute intervals each plant states (48: 12 hours)")
    ap.add_argument("--quick", action="store_true",
                    help="a fast run: 2 fogs of 5 plants for 4 intervals (overrides the sizes)")
    args = ap.parse_args(argv)
    if args.quick:
        args.fogs, args.generators, args.intervals = 2, 5, 4
    if min(args.fogs, args.generators, args.intervals) < 1:
        ap.error("--fogs, --generators and --intervals must be at least 1")
    t0 = time.perf_counter()
    print(f"green-certificate issuance through anchors: {args.fogs} fogs x {args.generators} "
          f"plants x {args.intervals} intervals, full output, 1 MWh certificates; "
          "embedded chain on SQLite")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-certificates-") as tmp:
        for plant in PLANTS:
            rows[plant] = run(plant, args.fogs, args.generators, args.intervals, Path(tmp))
    report(rows)
    print(f"(measured in {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
