"""Ack latency while anonymous clients hammer the fog's API.

    python -m tools.bench_acks [--meters 100] [--readings 1000] [--clients 4] [--seconds 15]
                               [--baseline REV]

A real fog node (SQLite data dir, real signatures) logs `meters` x `readings` readings
(100 x 1000: a log of 100,100 entries with the enrollments) and seals a checkpoint; its API
serves on 127.0.0.1. A thread plays the ingest thread: one reading of a meter at a time,
through `Ingest.process` under the node's lock as the service runs it, every 10 ms; the
time from taking the lock to holding the signed ack is one ack's latency. Measured first
with the API idle, then with `clients` client processes (their own interpreters, as
clients on the network are) looping GET /v1/proof/enrollment for a meter the fog never
saw, the public endpoint that used to scan the whole log under the ingest lock. Printed per
API: acks measured, median, 95th percentile and worst latency, the hammered/idle ratio of
the medians, and the requests per second the hammering got answered.

The baseline is the fog API as it was at git revision --baseline (default: the last commit
whose API read under the ingest lock and scanned the log for an unknown meter), loaded
from git with the HTTP layer of the same revision, against the same node. `--baseline none`
measures the current API only.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fog_node.node import FogNode
from meterledger import wire as P
from tools.bench_api import IVL, T0, Served, _load, build_node, git_sources, moved_modules

# the last commit whose fog API held the ingest lock while it read, scanning the log
BASELINE = "bf5c65ad79423750abe2f991dc7974994faca6c8"
_ROOT = Path(__file__).resolve().parent.parent
PACE_S = 0.01  # between acks: readings arrive, they are not a tight loop
UNKNOWN = P.SigningKey.from_int(0xBEEF)  # a meter the fog never saw


def hammer(port: int, target: str, stop: Any, served: Any) -> None:
    """A client process: GET `target` in a loop on one kept-alive connection until `stop`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    n = 0
    while not stop.is_set():
        try:
            conn.request("GET", target)
            r = conn.getresponse()
            r.read()
            n += 1
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    with served.get_lock():
        served.value += n
    conn.close()


def measure_acks(node: FogNode, seconds: float, first_seq: int) -> tuple[list[float], int]:
    """Ack latencies (s) of one meter's readings, one every PACE_S, for `seconds`; and the
    next seq to use."""
    key = P.SigningKey.from_int(0xAC4)
    prev = node.registry.logged_digest(key.id, first_seq - 1) if first_seq > 1 else None
    digest = prev[0] if prev else bytes(32)
    out: list[float] = []
    seq = first_seq
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = P.sign1(key, P.reading(key.id, seq, T0 + IVL * (seq - 1), IVL, 100 + seq, 0, 0,
                                   digest))  # the meter's work, before the clock starts
        t = time.perf_counter()
        with node.lock:  # as FogService.step holds it
            outcomes, acks = node.ingest.process([m])
        out.append(time.perf_counter() - t)
        if outcomes[0].status != "logged" or not acks:
            raise SystemExit(f"bench_acks: reading {seq} was {outcomes[0].status}")
        digest, seq = P.digest(m), seq + 1
        time.sleep(PACE_S)
    return out, seq


def run(node: FogNode, factory: Callable[[FogNode], Served], clients: int, seconds: float,
        seq: int) -> tuple[dict[str, Any], int]:
    """Idle, then hammered: the ack latencies and the hammering's answered requests/s."""
    api = factory(node)
    port = api.start("127.0.0.1", 0)
    size = node.checkpoints.latest().size  # type: ignore[union-attr]
    target = f"/v1/proof/enrollment?dev={UNKNOWN.id.hex()}&size={size}"
    ctx = multiprocessing.get_context("spawn")
    try:
        idle, seq = measure_acks(node, seconds, seq)
        stop, served = ctx.Event(), ctx.Value("l", 0)
        procs = [ctx.Process(target=hammer, args=(port, target, stop, served))
                 for _ in range(clients)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # the clients are up and looping
        t = time.monotonic()
        busy, seq = measure_acks(node, seconds, seq)
        stop.set()
        for p in procs:
            p.join(120)
        rate = served.value / (time.monotonic() - t + 1.0)
    finally:
        api.stop()
    return {"idle": idle, "busy": busy, "rate": rate}, seq


def baseline_api(rev: str) -> Callable[[FogNode], Served] | None:
    """The FogAPI of `rev` with the HTTP layer and metrics of the same revision."""
    paths = ("meterledger/infra/http_transport.py", "meterledger/infra/http.py",
             "fog_node/metrics.py", "fog_node/api.py")
    sources = git_sources(rev, paths, "bench_acks")
    if sources is None:
        return None
    moved = moved_modules()
    transport = _load("_bench_old_http_transport", sources[paths[0]], moved)
    layer = _load("_bench_old_http", sources[paths[1]],
                  {**moved, "meterledger.infra.http_transport": transport})
    metrics = _load("_bench_old_fog_metrics", sources[paths[2]], moved)
    api = _load("_bench_old_fog_api", sources[paths[3]],
                {**moved, "meterledger.infra.http": layer, "fog_node.metrics": metrics})
    cls: Callable[[FogNode], Served] = api.FogAPI
    return cls


def _ms(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000


def report(name: str, r: dict[str, Any], clients: int) -> None:
    idle, busy = r["idle"], r["busy"]
    ratio = statistics.median(busy) / statistics.median(idle)
    for what, xs in (("idle", idle), (f"{clients} clients", busy)):
        print(f"{name:<9} {what:<11} {len(xs):>6} {statistics.median(xs) * 1000:>9.2f} "
              f"{_ms(xs, 0.95):>9.2f} {max(xs) * 1000:>9.2f}"
              + (f" {ratio:>7.1f}x {r['rate']:>9.0f}" if xs is busy else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_acks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=100, help="meters in the log (default 100)")
    ap.add_argument("--readings", type=int, default=1000,
                    help="readings per meter (default 1000: a 100,100-entry log)")
    ap.add_argument("--clients", type=int, default=4,
                    help="client processes looping the enrollment proof (default 4)")
    ap.add_argument("--seconds", type=float, default=15.0,
                    help="seconds of acks per figure (default 15)")
    ap.add_argument("--baseline", default=BASELINE,
                    help="git revision of the old API to compare with ('none': no comparison)")
    args = ap.parse_args(argv)
    from fog_node.api import FogAPI

    old = None if args.baseline == "none" else baseline_api(args.baseline)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        node, _ = build_node(Path(tmp) / "fog", args.meters, args.readings,
                             now_ivls=args.readings + 100_000)
        key = P.SigningKey.from_int(0xAC4)
        node.ingest.decide(key.public_key.raw, "active", "bench")
        print(f"log of {node.log.size():,} entries built in {time.monotonic() - t:.0f} s; "
              f"acks every {PACE_S * 1000:.0f} ms for {args.seconds:g} s per figure; "
              f"{args.clients} client processes loop GET /v1/proof/enrollment for an unknown "
              "meter")
        try:
            results = {}
            seq = 1
            results["current"], seq = run(node, FogAPI, args.clients, args.seconds, seq)
            if old is not None:
                results["baseline"], seq = run(node, old, args.clients, args.seconds, seq)
        finally:
            node.close()
    print(f"{'API':<9} {'clients':<11} {'acks':>6} {'median ms':>9} {'p95 ms':>9} "
          f"{'max ms':>9} {'ratio':>8} {'req/s':>9}")
    for name, r in results.items():
        report(name, r, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
