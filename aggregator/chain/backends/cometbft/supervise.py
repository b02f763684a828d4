"""`meterledger chain up --dir DIR` and `meterledger chain status --dir DIR`: run a testnet's
validators on this machine and say how they are.

`up` starts, for every validator, its application (`python -m aggregator run` on its app
dir: the ABCI socket and the HTTP API) and then its CometBFT node, logs of each in
DIR/NAME/app.log and DIR/NAME/cometbft.log; prints the status once every validator is up;
and on Ctrl-C or SIGTERM stops CometBFT first (no block is left half-applied), then the apps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from typing import IO, Any

from aggregator.chain.backends.cometbft import engine
from aggregator.chain.backends.cometbft.network import Network, NetworkError, Validator
from aggregator.chain.backends.cometbft.rpc import CometRPC, RPCError, RPCUnavailable

_STOP_S = 15.0


@dataclass
class Running:
    validator: Validator
    app: subprocess.Popen[bytes]
    comet: subprocess.Popen[bytes] | None
    logs: list[IO[bytes]]


def start_app(net: Network, v: Validator, extra: list[str] | None = None,
              module: str = "aggregator") -> Running:
    """Start the validator's application: `python -m aggregator run` (a test starts a
    changed one as `module`) with `extra` flags."""
    v.socket(net.root).unlink(missing_ok=True)  # a killed app's: CometBFT waits for the new
    log = open(net.root / v.name / "app.log", "ab")
    app = subprocess.Popen([sys.executable, "-m", module, "run", "--data-dir",
                            str(v.app_dir(net.root)), "--http-port", str(v.api_port),
                            *(extra or [])], stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, start_new_session=True)
    return Running(v, app, None, [log])


def start_comet(net: Network, r: Running) -> None:
    log = open(net.root / r.validator.name / "cometbft.log", "ab")
    r.comet = subprocess.Popen([str(engine.binary()), "node", "--home",
                                str(r.validator.home(net.root))], stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    r.logs.append(log)


def start(net: Network, names: list[str] | None = None,
          extra: list[str] | None = None) -> list[Running]:
    """Start the validators named (all by default): apps first, so each CometBFT finds its
    application's socket."""
    chosen = [v for v in net.validators if names is None or v.name in names]
    running: list[Running] = []
    try:
        for v in chosen:
            running.append(start_app(net, v, extra))
        for r in running:
            wait_socket(net, r)
            start_comet(net, r)
    except BaseException:  # nothing this started is left holding ports and locks
        stop(running)
        raise
    return running


def wait_socket(net: Network, r: Running) -> None:
    ready = threading.Event()
    sock = r.validator.socket(net.root)
    while not ready.wait(0.1):
        if sock.exists():
            return
        if r.app.poll() is not None:
            raise NetworkError(f"validator {r.validator.name}'s application exited "
                               f"({r.app.returncode}); see {net.root / r.validator.name}/app.log")


def answers(url: str) -> bool:
    """Whether GET `url` succeeds (a 2xx answer): a service up, a resource there."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:  # URLError and HTTPError are OSErrors
        return False


def stop_process(p: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL to its process group (each runs in its own session)."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(_STOP_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def stop(running: list[Running]) -> None:
    for r in running:
        stop_process(r.comet)
    for r in running:
        stop_process(r.app)
        for f in r.logs:
            f.close()


def status(net: Network) -> list[dict[str, Any]]:
    """Per validator: up or down, height, app hash, whether it signed the newest commit."""
    rows: list[dict[str, Any]] = []
    signers: set[str] = set()
    for v in net.validators:
        row: dict[str, Any] = {"name": v.name, "party": v.party, "rpc": v.rpc_url,
                               "api": v.api_url, "up": False}
        try:
            s = CometRPC(v.rpc_url, timeout=3).status()
            info = s["sync_info"]
            row.update(up=True, height=int(info["latest_block_height"]),
                       app_hash=info["latest_app_hash"], catching_up=info["catching_up"],
                       address=s["validator_info"]["address"])
            if not signers and row["height"] > 0:
                c = CometRPC(v.rpc_url, timeout=3).commit(row["height"])
                signers = {sig["validator_address"] for sig in
                           c["signed_header"]["commit"]["signatures"]
                           if sig["block_id_flag"] == 2}
        except (RPCUnavailable, RPCError, KeyError, ValueError):
            pass
        rows.append(row)
    for row in rows:
        if "address" in row:
            row["signed_last_commit"] = row["address"] in signers
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'validator':<16} {'up':<4} {'height':>7} {'signed':<7} app hash"]
    for r in rows:
        if not r["up"]:
            lines.append(f"{r['name']:<16} {'down':<4} {'-':>7} {'-':<7} -")
            continue
        signed = "yes" if r.get("signed_last_commit") else "no"
        lines.append(f"{r['name']:<16} {'yes':<4} {r['height']:>7} {signed:<7} "
                     f"{r['app_hash'][:16].lower()}{' (catching up)' if r['catching_up'] else ''}")
    return "\n".join(lines)


def up(net: Network) -> int:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    running = start(net)
    try:
        print(f"consortium {net.chain_name}: {len(running)} validators started "
              f"(logs in {net.root}/NAME/)", flush=True)
        while not stopping.wait(0.5):
            rows = status(net)
            if all(r["up"] for r in rows):
                print(format_status(rows), flush=True)
                break
        for r in running:
            print(f"{r.validator.name}: API {r.validator.api_url}, CometBFT RPC "
                  f"{r.validator.rpc_url}", flush=True)
        while not stopping.wait(0.5):
            for r in running:
                for what, p in (("application", r.app), ("CometBFT", r.comet)):
                    if p is not None and p.poll() is not None and not stopping.is_set():
                        print(f"{r.validator.name}: its {what} exited ({p.returncode}); see "
                              f"{net.root / r.validator.name}", file=sys.stderr, flush=True)
                        stopping.set()
    finally:
        stop(running)
    print("consortium stopped cleanly", flush=True)
    return 0 if all(r.app.returncode == 0 for r in running) else 1
