"""Anchor cost on the dispatch chain, and proof bundle size, measured in one run.

    python -m tools.bench_chain [--fogs 1,10,100] [--meters 1000] [--intervals 3]

Each simulated fog node logs `meters` signed readings per 15-minute interval (real
signatures, real RFC 9162 log, real signed checkpoints: two while the interval's readings
arrive, one at the interval close), then anchors them as the fog node does (one anchor per
interval, carrying its checkpoints and the consistency proof). Every anchor is submitted to a
real embedded ledger (sealed, signed blocks; in-memory store), from 8 threads as fogs
would. Measured per interval, after the first: main-chain transactions and bytes (transactions
plus block headers), against the naive design that puts every reading on the main chain as
its own transaction (the reading inside a type-12 transaction; block headers not even
counted). Then the proof bundle's size against the size of the log it proves a reading in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aggregator.chain.backends.embedded import EmbeddedLedger, create_genesis
from aggregator.chain.store import MemoryBlockStore
from fog_node.chainlink.link import build_anchor
from fog_node.log.checkpoints import Checkpoint, Checkpoints
from fog_node.log.store import MemoryLogStore
from meterledger import wire as P
from meterledger.wire import chain as C

T0 = 1_800_000_000


def signed_readings(meters: int, intervals: int) -> list[list[bytes]]:
    """readings[i] = one interval's readings of every meter (seq i+1, prev-linked)."""
    keys = [P.SigningKey.from_int(10_000 + m) for m in range(meters)]
    prev = [P.ZERO32] * meters
    out = []
    for i in range(intervals):
        row = []
        for m, k in enumerate(keys):
            raw = P.sign1(k, P.reading(k.id, i + 1, T0 + 900 * (i + 1), 900, 1000 * (i + 1) + m,
                                       0, 0, prev[m], {1: 2290, 2: 2350, 3: 4100}), check=False)
            prev[m] = P.digest(raw)
            row.append(raw)
        out.append(row)
    return out


class SimFog:
    def __init__(self, n: int, chain: bytes) -> None:
        self.key = P.SigningKey.from_int(500 + n)
        self.log = MemoryLogStore()
        self.cps = Checkpoints(":memory:", self.key, self.log)
        self.chain = chain
        self.nonce = 0
        self.head: Checkpoint | None = None

    def interval(self, readings: list[bytes], end: int) -> bytes:
        """Log one interval (two seals during arrival, one at the close); its anchor."""
        half = len(readings) // 2
        first = (self.head.height + 1) if self.head else 1
        for part, t in ((readings[:half], end + 5), (readings[half:], end + 10)):
            self.log.append_batch(part)
            self.cps.seal(t)
        self.cps.seal(end + 60, ivl=end)
        latest = self.cps.latest()
        assert latest is not None
        cps = [c for h in range(first, latest.height + 1) if (c := self.cps.at_height(h))]
        self.nonce += 1
        raw, n = build_anchor(self.key, self.chain, self.nonce, self.head, cps, self.log, end + 60)
        assert n == len(cps), "one anchor per interval fits 4096 bytes"
        self.head = latest
        return raw


def chain_cost(fogs: int, readings: list[list[bytes]]) -> dict[str, float]:
    dispatch = P.SigningKey.from_int(1)
    store = MemoryBlockStore()
    create_genesis(store, dispatch, T0)
    ledger = EmbeddedLedger(store, dispatch, lambda: float(T0))
    sims = [SimFog(n, dispatch.id) for n in range(fogs)]
    for i, f in enumerate(sims):
        ledger.submit(P.sign1(dispatch, C.tx(dispatch.id, i + 2, C.REGISTER, C.register_body(
            "fog", f.key.public_key.raw), T0, dispatch.id)))
    per: list[tuple[int, int, int]] = []  # (txs, tx bytes, header bytes) per interval
    with ThreadPoolExecutor(8) as pool:
        for i, row in enumerate(readings):
            h0 = ledger.head().height
            anchors = [f.interval(row, T0 + 900 * (i + 1)) for f in sims]
            list(pool.map(ledger.submit, anchors))
            blocks = [ledger.block(h) for h in range(h0 + 1, ledger.head().height + 1)]
            per.append((len(anchors), sum(map(len, anchors)), sum(len(b.header) for b in blocks)))
    steady = per[1:] or per
    txs = sum(p[0] for p in steady) / len(steady)
    tx_bytes = sum(p[1] for p in steady) / len(steady)
    header_bytes = sum(p[2] for p in steady) / len(steady)
    ledger.close()
    return {"txs": txs, "bytes": tx_bytes + header_bytes, "header_bytes": header_bytes,
            "anchor_size": tx_bytes / txs}


def naive_tx_size(reading: bytes) -> int:
    """A reading put on the main chain as its own type-12 transaction (signed by the meter)."""
    k = P.SigningKey.from_int(10_000)
    return len(P.sign1(k, C.tx(k.id, 1, "reading", {1: reading}, T0, bytes(8)), check=False))


def bundle_size(log_size: int, reading: bytes) -> tuple[int, int]:
    """(JSON bytes, binary bytes) of a proof bundle for a reading in a log of log_size."""
    fog = SimFog(0, bytes(8))
    dev = P.parse(reading).kid
    enrollment = P.sign1(fog.key, P.enrollment(dev, P.SigningKey.from_int(10_000).public_key.raw,
                                               "active", "", T0, fog.key.id))
    fog.log.append_batch([enrollment])
    filler = reading
    done = 1
    while done < log_size - 1:  # content does not change proof sizes; the count does
        n = min(100_000, log_size - 1 - done)
        fog.log.append_batch([filler] * n)
        done += n
    fog.log.append_batch([reading])
    fog.cps.seal(T0)
    cp = fog.cps.latest()
    assert cp is not None
    anchor, _ = build_anchor(fog.key, bytes(8), 1, None, [cp], fog.log, T0)
    dispatch = P.SigningKey.from_int(1)
    header = P.sign1(dispatch, C.block_header(dispatch.id, 7, P.ZERO32, C.tx_root([anchor] * 20),
                                              20, T0, dispatch.id))
    leaf = log_size - 1
    parts: dict[str, Any] = {
        "version": 1, "reading": reading.hex(), "device_pub": "04" + "00" * 64,
        "enrollment": {"entry": enrollment.hex(), "leaf_index": 0, "inclusion_path": [
            h.hex() for h in fog.log.inclusion_proof(0, cp.size).path]},
        "leaf_index": leaf, "tree_size": cp.size,
        "inclusion_path": [h.hex() for h in fog.log.inclusion_proof(leaf, cp.size).path],
        "checkpoint": cp.msg.hex(), "fog_pub": fog.key.public_key.raw.hex(),
        "anchor": {"block_height": 7, "block_header": header.hex(),
                   "sealer_signature": "00" * 64, "transaction": anchor.hex(), "tx_index": 3,
                   "tx_path": [h.hex() for h in C.tx_path([anchor] * 20, 3)]}}
    text = json.dumps(parts)
    binary = sum(len(v) // 2 for v in _hex_values(parts))
    return len(text), binary


def _hex_values(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [v for x in doc.values() for v in _hex_values(x)]
    if isinstance(doc, list):
        return [v for x in doc for v in _hex_values(x)]
    return [doc] if isinstance(doc, str) else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_chain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fogs", default="1,10,100")
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--intervals", type=int, default=3)
    ap.add_argument("--log-sizes", default="1000,10000,100000,1000000")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    readings = signed_readings(args.meters, args.intervals)
    naive_tx = naive_tx_size(readings[0][0])
    print(f"main-chain cost per 15-minute interval, {args.meters:,} meters per fog node "
          f"(naive: every reading its own {naive_tx}-byte transaction)")
    print(f"{'fogs':>6} {'anchor txs':>11} {'chain bytes':>12} {'per anchor':>11} "
          f"{'naive txs':>10} {'naive bytes':>12} {'bytes ratio':>12}")
    for fogs in (int(x) for x in args.fogs.split(",")):
        c = chain_cost(fogs, readings)
        naive_txs = fogs * args.meters
        naive_bytes = naive_txs * naive_tx
        print(f"{fogs:>6} {c['txs']:>11,.0f} {c['bytes']:>12,.0f} {c['anchor_size']:>11,.0f} "
              f"{naive_txs:>10,} {naive_bytes:>12,} {naive_bytes / c['bytes']:>11,.0f}x")
    print()
    print("proof bundle (one reading, offline-verifiable) against the log it comes from")
    print(f"{'log entries':>12} {'log bytes':>14} {'bundle JSON':>12} {'bundle binary':>14} "
          f"{'binary/log':>11}")
    entry = len(readings[0][0])
    for n in (int(x) for x in args.log_sizes.split(",")):
        js, binary = bundle_size(n, readings[0][0])
        print(f"{n:>12,} {n * entry:>14,} {js:>12,} {binary:>14,} {binary / (n * entry):>11.2e}")
    print(f"(measured in {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
