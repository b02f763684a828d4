"""The consortium (four CometBFT validators) against the embedded backend, measured in one run.

    python -m tools.bench_consortium [--fogs 10,100] [--anchors-per-fog 10] [--closes 10]
                                     [--commit-ms 200] [--flush-ms 10] [--quick] [--keep]

Both backends serve the same aggregator HTTP API from their own processes on this machine:
the embedded one is `python -m aggregator run` on a fresh data dir (one sealer, SQLite); the
consortium is a local four-validator network written by network.create into a short /tmp
folder and run by supervise.start (each validator: `python -m aggregator run` as its ABCI
application and API, and `cometbft node`). POST /v1/tx answers once the transaction is in a
sealed (embedded) or committed (consortium) block. The embedded backend is measured first,
then stopped, then the consortium, so neither runs beside the other.

Simulated fog nodes (real RFC 9162 logs of 1,000 entries an interval, real signed checkpoints
and type-11 aggregates, anchors built by the fog's own `build_anchor`): every anchor is one
interval close, carrying the interval's three checkpoints (two while its readings arrive, one
at the close naming the aggregate) and the aggregate. Each fog submits sequentially, its next
anchor once the previous one is committed, as the fog's outbox does; the fogs run
concurrently, spread over the four validators' APIs (all on the one embedded API). Anchors
are signed before the clock starts, except fog 0's, which closes its intervals live.

Measured per backend and fog count: committed anchors per second (all anchors over the wall
time from the first submit to the last answer) and commit latency (submit to the 200 answer,
median and 95th percentile); the time from an interval close to its anchored aggregate (fog
0 signs the aggregate and the checkpoint, builds and submits the anchor: close to committed),
for one fog alone (`--closes` intervals) and for fog 0 among the others; and the size of a
proof bundle's anchor section (tools.audit's): embedded, the block header, the sealer's
signature and the transaction's path; consortium, CometBFT's signed header and the
transaction's proof (the `finality` of GET /v1/tx), with the transaction in both. Ratios are
consortium / embedded. And what bounds them: each backend's processes' CPU time per committed
anchor (Linux /proc) and the cores they kept busy. `--commit-ms` and `--flush-ms` (CometBFT's
timeout_commit and p2p flush_throttle_timeout, network.create's commit_ms and flush_ms; 200
and 10 ms by default, as `meterledger chain testnet`) change the consortium's timers to see
what they cost. Other `cometbft node` processes seen on the machine during the run are
reported. Every process started is stopped on exit, error, Ctrl-C or SIGTERM.

This module holds the backends' processes (start, wait, stop) and the command line; the
simulated fogs and the measured runs are in tools.bench_consortium_load, the tables in
tools.bench_consortium_report.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft import engine, network, supervise
from aggregator.chain.backends.cometbft.rpc import CometRPC, RPCError, RPCUnavailable
from aggregator.chain.service.node import init_data_dir
from meterledger import wire as P
from meterledger.infra import datadir
from tools import audit_consortium
from tools.bench_consortium_load import Backend, BenchError, Client, measure
from tools.bench_consortium_report import report

_START_S = 180.0  # for a backend's APIs to answer


# --- the processes -------------------------------------------------------------------------------
def _wait(cond: Callable[[], bool], what: str, timeout: float = _START_S,
          alive: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the two backends ------------------------------------------------------------------------
def embedded_section(tx: dict[str, Any]) -> dict[str, Any]:
    """tools.audit's anchor section of an embedded chain's GET /v1/tx answer."""
    header = bytes.fromhex(tx["header"])
    return {"block_height": int(tx["height"]), "block_header": tx["header"],
            "sealer_signature": P.parse(header, schema=False).signature.hex(),
            "transaction": tx["tx"], "tx_index": int(tx["index"]), "tx_path": tx["path"]}


def _post_all(url: str, txs: list[bytes]) -> None:
    c = Client(url)
    try:
        for raw in txs:
            status, doc = c.request("POST", "/v1/tx", raw)
            if status != 200:
                raise BenchError(f"registering a fog: {status} {doc}")
    finally:
        c.close()


@contextlib.contextmanager
def embedded(root: Path) -> Iterator[Backend]:
    """`python -m aggregator run` on a fresh data dir, on a free port."""
    d = root / "embedded"
    key = init_data_dir(d, int(time.time()))
    port = _free_port()
    log = open(root / "embedded.log", "ab")
    p = subprocess.Popen([sys.executable, "-m", "aggregator", "run", "--data-dir", str(d),
                          "--http-port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def alive() -> None:
            if p.poll() is not None:
                raise BenchError(f"the embedded aggregator exited ({p.returncode}); see "
                                 f"{root / 'embedded.log'}")

        _wait(lambda: supervise.answers(url + "/healthz"), "the embedded aggregator's API", alive=alive)
        yield Backend("embedded", [url], key, lambda txs: _post_all(url, txs),
                      embedded_section, {"aggregator": [p.pid]})
    finally:
        supervise.stop_process(p)
        log.close()


def _serving(v: network.Validator) -> bool:
    if not supervise.answers(v.api_url + "/healthz"):
        return False
    try:
        return int(CometRPC(v.rpc_url, timeout=5).status()["sync_info"]
                   ["latest_block_height"]) >= 0
    except (RPCUnavailable, RPCError, KeyError, ValueError):
        return False


@contextlib.contextmanager
def consortium(root: Path, commit_ms: int, flush_ms: int) -> Iterator[Backend]:
    """A four-validator network on loopback: apps first, then each one's CometBFT."""
    net = network.create(root / "n", network.free_base_port(4), commit_ms, 4, flush_ms)
    key = datadir.read_key(net.validators[0].app_dir(net.root) / "dispatch.key",
                           "dispatch key", "")
    running: list[supervise.Running] = []
    try:
        for v in net.validators:
            running.append(supervise.start_app(net, v))
        for r in running:
            supervise.wait_socket(net, r)
            supervise.start_comet(net, r)

        def alive() -> None:
            for r in running:
                for what, proc in (("application", r.app), ("CometBFT", r.comet)):
                    if proc is not None and proc.poll() is not None:
                        raise BenchError(f"{r.validator.name}'s {what} exited; see "
                                         f"{net.root / r.validator.name}")

        for v in net.validators:
            _wait(functools.partial(_serving, v), f"{v.name}'s API and CometBFT node",
                  alive=alive)

        def register(txs: list[bytes]) -> None:
            rpc = CometRPC(net.validators[0].rpc_url, timeout=30)
            for raw in txs[:-1]:  # into the mempool in nonce order; one block takes them all
                r = rpc.broadcast(raw)
                if int(r.get("code", 0)) != 0:
                    raise BenchError(f"registering a fog: CheckTx said {r}")
            _post_all(net.validators[0].api_url, txs[-1:])
            last = P.digest(txs[-1]).hex()
            for v in net.validators:  # every validator knows the fogs before they send
                _wait(functools.partial(supervise.answers, f"{v.api_url}/v1/tx/{last}"),
                      f"{v.name} to commit the registrations", alive=alive)

        yield Backend("consortium", [v.api_url for v in net.validators], key, register,
                      audit_consortium.anchor_section,
                      {"apps": [r.app.pid for r in running],
                       "cometbft": [r.comet.pid for r in running if r.comet is not None]})
    finally:
        for r in running:  # CometBFT first (no block half-applied), then the apps
            supervise.stop_process(r.comet)
        for r in running:
            supervise.stop_process(r.app)
            for f in r.logs:
                f.close()



_OTHERS: set[str] = set()  # other `cometbft node` processes seen while measuring


def _other_nodes(root: Path) -> set[str]:
    """`cometbft node` processes on this machine that this bench did not start."""
    try:
        r = subprocess.run(["pgrep", "-fa", "cometbft node"], capture_output=True, text=True)
    except OSError:  # no pgrep: nothing to say
        return set()
    return {line.split()[0] for line in r.stdout.splitlines() if str(root) not in line}


def _watch_others(root: Path, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        _OTHERS.update(_other_nodes(root))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the finally blocks stop every process


def _args(argv: list[str] | None) -> tuple[argparse.Namespace, list[int]]:
    """The command line, checked (a usage error exits 2), and the fog counts."""
    ap = argparse.ArgumentParser(prog="python -m tools.bench_consortium", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fogs", default="10,100",
                    help="fog counts submitting concurrently, comma-separated (default 10,100)")
    ap.add_argument("--anchors-per-fog", type=int, default=10,
                    help="anchors (interval closes) each fog submits per run (default 10)")
    ap.add_argument("--closes", type=int, default=10,
                    help="interval closes of one fog alone, for close -> committed (default 10)")
    ap.add_argument("--commit-ms", type=int, default=200,
                    help="CometBFT's timeout_commit in ms (network.create's commit_ms; "
                         "`meterledger chain testnet`'s default is 200)")
    ap.add_argument("--flush-ms", type=int, default=10,
                    help="CometBFT's p2p flush_throttle_timeout in ms (network.create's "
                         "flush_ms; `meterledger chain testnet`'s default is 10, CometBFT's "
                         "own 100)")
    ap.add_argument("--quick", action="store_true",
                    help="a tiny run for the test: --fogs 2,3 --anchors-per-fog 2 --closes 2")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary folder (data dirs, logs) and print where")
    args = ap.parse_args(argv)
    if args.quick:
        args.fogs, args.anchors_per_fog, args.closes = "2,3", 2, 2
    try:
        sizes = [int(x) for x in args.fogs.split(",")]
    except ValueError:
        ap.error(f"--fogs takes numbers separated by commas, not {args.fogs!r}")
    if any(n < 1 for n in sizes) or args.anchors_per_fog < 1 or args.closes < 1:
        ap.error("--fogs, --anchors-per-fog and --closes must be at least 1")
    if args.commit_ms < 0 or args.flush_ms < 1:
        ap.error("--commit-ms must not be negative, nor --flush-ms below 1")
    return args, sizes


def _compare(args: argparse.Namespace, sizes: list[int], root: Path,
             stop: threading.Event) -> None:
    """Measure the embedded backend, then the consortium, and print the report."""
    t0 = time.perf_counter()
    print(f"consortium (4 validators, timeout_commit {args.commit_ms} ms, p2p flush_throttle "
          f"{args.flush_ms} ms) vs embedded, both `python -m aggregator run` over HTTP on "
          f"127.0.0.1; fogs {sizes}, {args.anchors_per_fog} anchors each", flush=True)
    with embedded(root) as b:
        emb = measure(b, sizes, args.anchors_per_fog, args.closes, stop)
    with consortium(root, args.commit_ms, args.flush_ms) as b:
        con = measure(b, sizes, args.anchors_per_fog, args.closes, stop)
    report(emb, con, sizes, args.commit_ms, args.flush_ms)
    if _OTHERS:
        print(f"note: {len(_OTHERS)} other `cometbft node` process(es) ran on this machine "
              "during the run (not this bench's): the figures shared its cores with them")
    print(f"(measured in {time.perf_counter() - t0:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    args, sizes = _args(argv)
    try:
        engine.binary()
    except engine.EngineMissing as e:
        print(f"bench_consortium: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="ml-bench-"))  # short: Unix socket paths
    _OTHERS.clear()
    _OTHERS.update(_other_nodes(root))
    seen = threading.Thread(target=_watch_others, args=(root, stop), daemon=True)
    seen.start()
    try:
        _compare(args, sizes, root, stop)
        return 0
    except KeyboardInterrupt:
        print("interrupted; every process stopped", file=sys.stderr)
        return 130
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
