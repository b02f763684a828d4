"""Regenerate tests/wire/vectors/cometbft/ from real CometBFT nodes (no hand-made values).

    python -m tools.cometbft_vectors BINARY [--out tests/wire/vectors/cometbft] [--work DIR]

BINARY is a `cometbft` v0.38 executable. The script runs two networks on loopback, each with
the built-in kvstore application (`--proxy_app=kvstore`), free ports it picks itself and
short consensus timeouts:

  single/  one validator (`cometbft init`);
  four/    four validators (`cometbft testnet --v 4`), each node on its own P2P and RPC
           ports, peered with the others on 127.0.0.1 (allow_duplicate_ip).

It broadcasts a few kvstore transactions `k=v` (some one per block, some several in one
block) and saves, verbatim as the node's JSON-RPC `result` objects:

  genesis.json                the network's genesis file
  commit_H.json               GET /commit?height=H      (signed_header: header + commit)
  block_H.json                GET /block?height=H       (the transactions)
  validators_H.json           GET /validators?height=H  (the set that signed H)
  tx_HASH.json                GET /tx?hash=0xHASH&prove=true  (CometBFT's own tx proof)
  index.json                  chain id, the heights saved and which block holds each tx

Heights saved: 1 (no previous block), 2, and every block holding a transaction; each saved
commit must carry every validator's precommit (else the script fails: run it again). Every node
is stopped (SIGTERM, then SIGKILL after 10 s) whatever happens. The output directory's
single/ and four/ are replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "wire" / "vectors" / "cometbft"
CHAIN_IDS = {"single": "meterledger-cometbft-single", "four": "meterledger-cometbft-four"}
# short rounds: a block every ~0.3 s, yet time for every precommit to arrive on loopback
CONSENSUS = {
    "timeout_propose": '"1s"', "timeout_prevote": '"300ms"', "timeout_precommit": '"300ms"',
    "timeout_commit": '"300ms"',
}
START_TIMEOUT = 60.0


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on 127.0.0.1 right now (held open together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def rewrite_config(path: Path, values: dict[tuple[str, str], str]) -> None:
    """Set `key = value` lines of config.toml per (section, key); "" is the top section.
    Every key asked for must exist, so a CometBFT whose config moved fails loudly."""
    section, seen, out = "", set(), []
    for line in path.read_text().splitlines():
        if m := re.match(r"^\[([a-z0-9_.]+)\]\s*$", line):
            section = m.group(1)
        elif m := re.match(r"^([a-z_]+)\s*=", line):
            if (section, m.group(1)) in values:
                line = f"{m.group(1)} = {values[(section, m.group(1))]}"
                seen.add((section, m.group(1)))
        out.append(line)
    if missing := set(values) - seen:
        raise SystemExit(f"{path}: no such settings {sorted(missing)}")
    path.write_text("\n".join(out) + "\n")


def set_chain_id(home: Path, chain_id: str) -> None:
    path = home / "config" / "genesis.json"
    genesis = json.loads(path.read_text())
    genesis["chain_id"] = chain_id
    path.write_text(json.dumps(genesis, indent=2) + "\n")


def rpc(port: int, path: str, timeout: float = 30.0) -> Any:
    """The `result` of a JSON-RPC GET; raises RuntimeError on an RPC error."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        answer = json.load(r)
    if "error" in answer:
        raise RuntimeError(f"{path}: {answer['error']}")
    return answer["result"]


def height(port: int) -> int:
    return int(rpc(port, "/status")["sync_info"]["latest_block_height"])


def wait_height(port: int, h: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, RuntimeError, ValueError, KeyError):
            if height(port) >= h:
                return
        time.sleep(0.2)
    raise SystemExit(f"node on port {port} did not reach height {h} in {timeout:.0f} s")


@contextlib.contextmanager
def running(binary: str, homes: Sequence[Path]) -> Iterator[None]:
    """Run `cometbft node` for each home; stop them all on the way out, whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for home in homes:
            with (home / "node.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [binary, "node", "--home", str(home), "--proxy_app=kvstore"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def configure(home: Path, rpc_port: int, p2p_port: int, peers: str = "") -> None:
    values = {("rpc", "laddr"): f'"tcp://127.0.0.1:{rpc_port}"',
              ("p2p", "laddr"): f'"tcp://127.0.0.1:{p2p_port}"',
              ("p2p", "persistent_peers"): f'"{peers}"',
              ("p2p", "allow_duplicate_ip"): "true",
              ("p2p", "addr_book_strict"): "false",
              ("", "log_level"): '"error"'}
    values.update({("consensus", k): v for k, v in CONSENSUS.items()})
    rewrite_config(home / "config" / "config.toml", values)


def send_txs(ports: Sequence[int]) -> dict[str, int]:
    """Broadcast kvstore txs: two committed one by one (to different nodes), then a burst of
    five that land together. Returns {tx hash (upper hex): block height}."""
    out: dict[str, int] = {}
    for i, port in enumerate([ports[0], ports[-1]]):
        r = rpc(port, f"/broadcast_tx_commit?tx=0x{f'solo{i}=v{i}'.encode().hex()}")
        out[r["hash"]] = int(r["height"])
    burst = [rpc(ports[0], f"/broadcast_tx_sync?tx=0x{f'burst{i}=w{i}'.encode().hex()}")["hash"]
             for i in range(5)]
    deadline = time.monotonic() + START_TIMEOUT
    for h in burst:
        while h not in out:
            with contextlib.suppress(RuntimeError, urllib.error.HTTPError):
                out[h] = int(rpc(ports[0], f"/tx?hash=0x{h}")["height"])
            if time.monotonic() > deadline:
                raise SystemExit(f"tx {h} was not committed in {START_TIMEOUT:.0f} s")
            time.sleep(0.2)
    return out


def capture(binary: str, port: int, home: Path, name: str, txs: dict[str, int],
            out: Path) -> None:
    """Save genesis, commit, block, validators for the chosen heights, and every tx proof."""
    heights = sorted({1, 2, *txs.values()})
    wait_height(port, max(heights) + 1)  # so every saved commit is the canonical one
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copyfile(home / "config" / "genesis.json", out / "genesis.json")

    def save(file: str, value: Any) -> None:
        (out / file).write_text(json.dumps(value, indent=2) + "\n")

    for h in heights:
        commit = rpc(port, f"/commit?height={h}")
        flags = [s["block_id_flag"] for s in commit["signed_header"]["commit"]["signatures"]]
        if flags != [2] * len(flags):  # the tests remove signatures from whole commits
            raise SystemExit(f"commit {h} lacks a precommit (flags {flags}); run again")
        save(f"commit_{h}.json", commit)
        save(f"block_{h}.json", rpc(port, f"/block?height={h}"))
        save(f"validators_{h}.json", rpc(port, f"/validators?height={h}"))
    for tx_hash in txs:
        save(f"tx_{tx_hash}.json", rpc(port, f"/tx?hash=0x{tx_hash}&prove=true"))
    version = subprocess.run([binary, "version"], check=True, capture_output=True, text=True)
    save("index.json", {"network": name, "cometbft": version.stdout.strip(),
                        "chain_id": CHAIN_IDS[name], "heights": heights,
                        "txs": dict(sorted(txs.items()))})


def single(binary: str, work: Path, out: Path) -> None:
    home = work / "single"
    subprocess.run([binary, "init", "--home", str(home)], check=True, capture_output=True)
    set_chain_id(home, CHAIN_IDS["single"])
    rpc_port, p2p_port = free_ports(2)
    configure(home, rpc_port, p2p_port)
    with running(binary, [home]):
        wait_height(rpc_port, 2)
        txs = send_txs([rpc_port])
        capture(binary, rpc_port, home, "single", txs, out / "single")


def four(binary: str, work: Path, out: Path) -> None:
    base = work / "four"
    subprocess.run([binary, "testnet", "--v", "4", "--n", "0", "--o", str(base),
                    "--starting-ip-address", "127.0.0.1", "--populate-persistent-peers"],
                   check=True, capture_output=True)
    homes = [base / f"node{i}" for i in range(4)]
    ids = [subprocess.run([binary, "show-node-id", "--home", str(h)], check=True,
                          capture_output=True, text=True).stdout.strip() for h in homes]
    ports = free_ports(8)
    rpc_ports, p2p_ports = ports[:4], ports[4:]
    for i, home in enumerate(homes):
        set_chain_id(home, CHAIN_IDS["four"])
        peers = ",".join(f"{ids[j]}@127.0.0.1:{p2p_ports[j]}" for j in range(4) if j != i)
        configure(home, rpc_ports[i], p2p_ports[i], peers)
    with running(binary, homes):
        for port in rpc_ports:
            wait_height(port, 2)
        txs = send_txs(rpc_ports)
        capture(binary, rpc_ports[0], homes[0], "four", txs, out / "four")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cometbft_vectors",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="a cometbft v0.38 executable")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, help="keep the nodes' homes here (default: a "
                        "temporary directory, removed afterwards)")
    args = parser.parse_args(argv)
    # a SIGTERM to this script unwinds like an error, so `running` still stops the nodes
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        single(args.binary, work, args.out)
        four(args.binary, work, args.out)
    print(f"wrote {args.out}/single and {args.out}/four")
    return 0


if __name__ == "__main__":
    sys.exit(main())
