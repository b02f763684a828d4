"""The fog HTTP API's cost per request, measured in one run (`make bench`).

    python -m tools.bench_api [--requests 300] [--meters 20] [--readings 10] [--baseline REV]

A real fog node (SQLite data dir, real signatures) logs `meters` x `readings` readings and
seals a checkpoint; its API serves on 127.0.0.1 (ephemeral port) and one client sends
`requests` sequential GETs to each of /v1/checkpoint, /v1/proof/inclusion and /metrics,
first opening a new connection per request (keep-alive off), then reusing one connection
(keep-alive on). Printed: wall milliseconds per request, client included (http.client on
the same machine).

The baseline is the fog API as it was before it moved to the shared Starlette/uvicorn layer
(fog_node/api.py and fog_node/metrics.py at git revision --baseline, by default the last
commit with the http.server implementation), loaded from git into temporary modules and
run against the same node, so both sides are measured in the same process and conditions.
Without git history (`--baseline none`) only the current API is measured. The old server
spoke HTTP/1.0 and closed every connection, so its "keep-alive on" column still reconnects
for every request: that is what its clients got.
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from fog_node.config import FogConfig
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P

T0 = 1_800_000_000
IVL = 900
# the last commit whose fog API ran on http.server with hand-written metrics
BASELINE = "31d577e0a43ec046080d9a45258d0f002aef5bd2"
# modules the old code imports that have moved since: the new ones stand in for them
MOVED = {"fog_node.checkpoints": "fog_node.log.checkpoints",
         "fog_node.rs485": "fog_node.transport.rs485.master"}
_ROOT = Path(__file__).resolve().parent.parent


class Served(Protocol):
    def start(self, host: str = ..., port: int = ...) -> int: ...
    def stop(self) -> None: ...


def build_node(data_dir: Path, meters: int, readings: int,
               now_ivls: int | None = None) -> tuple[FogNode, str]:
    """A fog node holding `meters` x `readings` signed readings under one checkpoint (its
    clock `now_ivls` intervals after the first, default just after the last reading);
    returns it and the query of an inclusion proof for a reading in the middle."""
    now = float(T0 + IVL * (now_ivls if now_ivls is not None else readings + 2))
    init_data_dir(data_dir)
    node = FogNode(FogConfig(data_dir=data_dir), clock=lambda: now)
    keys = [P.SigningKey.from_int(0x1000 + i) for i in range(meters)]
    for k in keys:
        node.ingest.decide(k.public_key.raw, "active", "bench")
    prev = {k.id: bytes(32) for k in keys}
    for seq in range(1, readings + 1):
        batch = []
        for k in keys:
            m = P.sign1(k, P.reading(k.id, seq, T0 + IVL * (seq - 1), IVL, 100 + seq, 0, 0,
                                     prev[k.id]))
            prev[k.id] = P.digest(m)
            batch.append(m)
        node.ingest.process(batch)
    if node.checkpoints.seal(int(now)) is None:
        raise SystemExit("bench_api: the node sealed no checkpoint")
    mid = keys[len(keys) // 2]
    return node, f"dev={mid.id.hex()}&seq={max(1, readings // 2)}"


def _load(name: str, source: str, replace: dict[str, types.ModuleType]) -> types.ModuleType:
    """Execute `source` as module `name`, with `replace` standing in for those modules
    while it imports them (so the old API renders with the old metrics): in sys.modules and
    as attributes of their packages, which `from package import module` reads first."""
    mod = types.ModuleType(name)
    mod.__file__ = f"<{name}>"
    saved = {k: sys.modules.get(k) for k in replace}
    attrs: list[tuple[types.ModuleType, str, object]] = []
    for k, v in replace.items():
        parent, _, child = k.rpartition(".")
        if parent in sys.modules:
            attrs.append((sys.modules[parent], child, getattr(sys.modules[parent], child, None)))
            setattr(sys.modules[parent], child, v)
    sys.modules.update(replace)
    sys.modules[name] = mod
    try:
        exec(compile(source, mod.__file__, "exec"), mod.__dict__)
    finally:
        for k, old in saved.items():
            if old is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = old
        for package, child, value in attrs:
            if value is None:
                delattr(package, child)
            else:
                setattr(package, child, value)
    return mod


def git_sources(rev: str, paths: tuple[str, ...], tool: str) -> dict[str, str] | None:
    """The text of each path at git `rev`; None (said once, naming `tool`) if git cannot
    show one of them."""
    sources = {}
    for path in paths:
        r = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=_ROOT, capture_output=True,
                           text=True)
        if r.returncode != 0:
            print(f"{tool}: no baseline ({path} at {rev[:12]}: {r.stderr.strip()})")
            return None
        sources[path] = r.stdout
    return sources


def moved_modules() -> dict[str, types.ModuleType]:
    """Old module names (MOVED) that no longer import, mapped to the modules now in their
    place, for loading an old revision's code against today's tree."""
    moved: dict[str, types.ModuleType] = {}
    for old, new in MOVED.items():
        try:
            importlib.import_module(old)
        except ImportError:
            moved[old] = importlib.import_module(new)
    return moved


def baseline_api(rev: str) -> Callable[[FogNode], Served] | None:
    """The FogAPI class of fog_node/api.py at git `rev`, or None if git cannot show it."""
    sources = git_sources(rev, ("fog_node/metrics.py", "fog_node/api.py"), "bench_api")
    if sources is None:
        return None
    moved = moved_modules()
    try:
        metrics = _load("_bench_old_fog_metrics", sources["fog_node/metrics.py"], moved)
        api = _load("_bench_old_fog_api", sources["fog_node/api.py"],
                    {**moved, "fog_node.metrics": metrics})
    except ImportError as e:
        print(f"bench_api: no baseline (the code at {rev[:12]} no longer imports: {e})")
        return None
    cls: Callable[[FogNode], Served] = api.FogAPI
    return cls


def time_requests(port: int, target: str, n: int, keep_alive: bool,
                  token: str = "") -> float:
    """Milliseconds per request of `n` sequential GETs (the median of 3 rounds), with
    `token` as the bearer token (the auditor's: /metrics and inclusion proofs need it)."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    rounds = []
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        t = time.perf_counter()
        for _ in range(n):
            if not keep_alive:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", target,
                         headers=auth if keep_alive else {**auth, "Connection": "close"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or not body:
                raise SystemExit(f"bench_api: GET {target} answered {r.status}: {body[:200]!r}")
            if not keep_alive:
                conn.close()
        rounds.append((time.perf_counter() - t) * 1000 / n)
        conn.close()
    return statistics.median(rounds)


def measure(factory: Callable[[FogNode], Served], node: FogNode, targets: dict[str, str],
            n: int) -> dict[tuple[str, bool], float]:
    api = factory(node)
    port = api.start("127.0.0.1", 0)
    token = (node.config.data_dir / "auditor.token").read_text().strip()
    try:
        time_requests(port, targets["checkpoint"], 20, True)  # warm up
        return {(name, ka): time_requests(port, target, n, ka, token)
                for ka in (False, True) for name, target in targets.items()}
    finally:
        api.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_api", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per figure")
    ap.add_argument("--meters", type=int, default=20)
    ap.add_argument("--readings", type=int, default=10, help="readings per meter")
    ap.add_argument("--baseline", default=BASELINE,
                    help="git revision of the old API to compare with ('none': no comparison)")
    args = ap.parse_args(argv)
    from fog_node.api import FogAPI

    old = None if args.baseline == "none" else baseline_api(args.baseline)
    with tempfile.TemporaryDirectory() as tmp:
        node, inclusion = build_node(Path(tmp) / "fog", args.meters, args.readings)
        try:
            targets = {"checkpoint": "/v1/checkpoint",
                       "inclusion": "/v1/proof/inclusion?" + inclusion,
                       "metrics": "/metrics"}
            print(f"fog API over a node of {args.meters} meters x {args.readings} readings "
                  f"({node.log.size()} log entries), {args.requests} sequential requests "
                  "per figure, ms per request (median of 3 rounds)")
            new = measure(FogAPI, node, targets, args.requests)
            before = measure(old, node, targets, args.requests) if old is not None else None
        finally:
            node.close()
    head = f"{'endpoint':<12} {'keep-alive':<11}"
    print(head + (f"{'before':>10} {'after':>10} {'after/before':>13}" if before else
                  f"{'ms':>10}"))
    for (name, ka), ms in new.items():
        row = f"{name:<12} {'on' if ka else 'off':<11}"
        if before is not None:
            row += f"{before[(name, ka)]:>10.3f} {ms:>10.3f} {ms / before[(name, ka)]:>13.2f}"
        else:
            row += f"{ms:>10.3f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
