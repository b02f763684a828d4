"""Cooked data on the main chain: bytes per interval against sending every reading, and the
time from interval close to the anchored aggregate, measured in one run.

    python -m tools.bench_cooked [--meters 100,1000,10000] [--feeder-size 50]

For each size a real fog node (SQLite data dir, real signatures) enrolls that many meters in
feeders of `feeder-size`, ingests one baseline reading and one interval's reading of each
meter, then closes the interval exactly as its service does: VEE, estimates, one signed
type-11 aggregate per feeder, the checkpoint naming them, and the anchor(s) carrying them,
sent through its chain link over HTTP to a real aggregator (embedded ledger, SQLite, sealed
blocks). Measured: the main-chain bytes of that close (the anchor transactions) against the
naive design that puts every reading on the chain as its own type-12 transaction; and the
wall time from the start of the close to the anchor's receipt (the block sealed). In service
the close starts `grace_s` (60 s) after the interval end and the link polls every
`chain_poll_s` (1 s); both are configuration, not work, and are not in the figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from aggregator.chain.service.api import AggregatorAPI
from aggregator.chain.service.node import init_data_dir as init_chain
from aggregator.chain.service.node import open_ledger
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.cooking.feeders import Feeder
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import chain as C
from tools.bench_chain import naive_tx_size

T0 = 1_800_000_000
IVL = 900


# long: one measured run: set-up, timing and tear-down together
def run(meters: int, feeder_size: int, root: Path) -> dict[str, float]:
    now = [float(T0)]

    def clock() -> float:
        return now[0]

    chain_dir = root / f"chain-{meters}"
    dispatch = init_chain(chain_dir, T0 - 10)
    ledger = open_ledger(chain_dir, clock)
    api = AggregatorAPI(ledger, clock)
    port = api.start("127.0.0.1", 0)
    fog_dir = root / f"fog-{meters}"
    fog_key = init_data_dir(fog_dir)
    keys = [P.SigningKey.from_int(1_000_000 + m) for m in range(meters)]
    feeders = [Feeder(f"feeder-{n:03d}", tuple(k.id for k in keys[n:n + feeder_size]))
               for n in range(0, meters, feeder_size)]
    node = FogNode(FogConfig(data_dir=fog_dir, feeders=feeders, skew_s=10**7), clock)
    try:
        ledger.submit(P.sign1(dispatch, C.tx(dispatch.id, 2, C.REGISTER, C.register_body(
            "fog", fog_key.public_key.raw, "bench"), T0, dispatch.id)))
        link = ChainLink(node, ChainClient(f"http://127.0.0.1:{port}"), clock)
        link.sync()
        for k in keys:
            node.ingest.decide(k.public_key.raw, "active", "bench")
        prev = [P.ZERO32] * meters
        raw_bytes = naive = 0
        for seq, t in ((1, T0), (2, T0 + IVL)):
            batch = []
            for m, k in enumerate(keys):
                raw = P.sign1(k, P.reading(k.id, seq, t, IVL, 1000 * seq + m, 0, 0, prev[m],
                                           {1: 2290, 2: 2350}), check=False)
                prev[m] = P.digest(raw)
                batch.append(raw)
            for n in range(0, meters, 1000):
                node.ingest.process(batch[n:n + 1000])
            if seq == 2:
                raw_bytes = sum(len(r) for r in batch)
                naive = sum(naive_tx_size(r) for r in batch)
        with node.lock:
            node.cooker.catch_up(T0 + IVL)  # the service indexes as readings come, every 5 s
            node.checkpoints.seal(T0 + IVL)
        link.plan(force=True)
        link.flush()
        before = {r[0] for r in link.db.execute("SELECT nonce FROM outbox")}
        now[0] = T0 + IVL + 60
        start = time.perf_counter()
        with node.lock:
            closed = node.cooker.close(T0 + IVL, T0 + IVL + 60,
                                       lambda: node.checkpoints.seal(T0 + IVL + 60, force=True))
            node.checkpoints.seal(T0 + IVL + 60, ivl=T0 + IVL, agg=closed.agg)
        closed_s = time.perf_counter() - start
        link.plan()
        landed = link.flush()
        total_s = time.perf_counter() - start
        rows = link.db.execute("SELECT nonce, tx, state FROM outbox").fetchall()
        txs = [r[1] for r in rows if r[0] not in before]
        assert landed == len(txs) and all(r[2] == "landed" for r in rows), "anchor not landed"
        carried = sum(len(P.parse(t).fields[4].get(3, [])) for t in txs)
        assert carried == len(closed.aggregates) == len(feeders)
        cooked = sum(len(t) for t in txs)
        return {"meters": meters, "feeders": len(feeders), "anchors": len(txs),
                "cooked_bytes": cooked, "aggregate_bytes": sum(map(len, closed.aggregates)),
                "reading_bytes": raw_bytes, "naive_bytes": naive, "ratio": naive / cooked,
                "close_ms": closed_s * 1000, "anchored_ms": total_s * 1000}
    finally:
        node.close()
        api.stop()
        ledger.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_cooked", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", default="100,1000,10000")
    ap.add_argument("--feeder-size", type=int, default=50)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.meters.split(",")]
    print("cooked data per interval vs every reading on the main chain (one fog node)")
    print(f"{'meters':>7} {'feeders':>7} {'anchors':>7} {'cooked B':>9} {'naive B':>10} "
          f"{'naive/cooked':>12} {'close ms':>9} {'anchored ms':>11}")
    with tempfile.TemporaryDirectory(prefix="bench-cooked-") as tmp:
        for n in sizes:
            r = run(n, args.feeder_size, Path(tmp))
            print(f"{r['meters']:>7} {r['feeders']:>7} {r['anchors']:>7} "
                  f"{r['cooked_bytes']:>9} {r['naive_bytes']:>10} {r['ratio']:>11.1f}x "
                  f"{r['close_ms']:>9.0f} {r['anchored_ms']:>11.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
