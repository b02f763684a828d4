"""A consortium network on one machine's loopback: `meterledger chain testnet --dir DIR`.

    DIR/network.json           the network: chain id, CometBFT chain id, the validators with
                               their names, roles, ports and folders
    DIR/genesis.json           CometBFT's genesis (the same in every home): the validators
                               with equal power, the chain's first transaction in app_state
    DIR/NAME/cometbft/         the validator's CometBFT home: its ed25519 consensus key
                               (config/priv_validator_key.json), node key, config.toml
    DIR/NAME/app/              the validator's aggregator data dir: chain.db, its API tokens,
                               consortium.json (its CometBFT RPC and ABCI socket); the
                               dispatch center's also holds dispatch.key, the chain's key
    DIR/NAME/app.sock          the ABCI socket between the two

Validators are named for the parties that run the chain; each has three ports from
--base-port: p2p (base + 10 i), CometBFT RPC (+1), the aggregator's HTTP API (+2).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft import engine
from aggregator.chain.ledger import AggregatorError
from meterledger import wire as P
from meterledger.infra import datadir
from meterledger.wire import chain as C
from meterledger.wire import cometbft as W

PARTIES = (("dispatch", "the dispatch center"), ("regulator-prov", "the provincial regulator"),
           ("regulator-nat", "the national regulator"), ("plant", "a power plant"))
NETWORK, GENESIS, CONSORTIUM = "network.json", "genesis.json", "consortium.json"
POWER = 10  # every validator's voting power: equal
_SOCKET_MAX = 100  # a Unix socket path's bytes (the kernel's limit is 108)


class NetworkError(AggregatorError):
    """A network folder that cannot be made or used; the message says why."""


@dataclass(frozen=True)
class Validator:
    name: str
    party: str
    p2p_port: int
    rpc_port: int
    api_port: int

    def home(self, root: Path) -> Path:
        return root / self.name / "cometbft"

    def app_dir(self, root: Path) -> Path:
        return root / self.name / "app"

    def socket(self, root: Path) -> Path:
        return root / self.name / "app.sock"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass(frozen=True)
class Network:
    root: Path
    chain: bytes
    chain_name: str
    validators: tuple[Validator, ...]

    def validator(self, name: str) -> Validator:
        for v in self.validators:
            if v.name == name:
                return v
        raise NetworkError(f"no validator {name!r} in {self.root}: "
                           + ", ".join(v.name for v in self.validators))


def load(root: Path) -> Network:
    try:
        d = json.loads((root / NETWORK).read_text())
        vals = tuple(Validator(**v) for v in d["validators"])
        return Network(root, bytes.fromhex(d["chain"]), d["chain_name"], vals)
    except FileNotFoundError:
        raise NetworkError(f"no network at {root}: run `meterledger chain testnet --dir "
                           f"{root}` first") from None
    except (ValueError, KeyError, TypeError) as e:
        raise NetworkError(f"{root / NETWORK} cannot be read: {e}") from None


def socket_fits(root: Path) -> bool:
    """Whether every validator's Unix socket path under `root` fits the kernel's limit."""
    longest = max((name for name, _ in PARTIES), key=len)
    return len(str(root.resolve() / longest / "app.sock").encode()) <= _SOCKET_MAX


def free_base_port(n: int = len(PARTIES)) -> int:
    """A base port with base + 10 i + {0, 1, 2} free on loopback for every validator i (a
    demo or test network beside whatever else runs); NetworkError if none is found."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000, 10)
        socks: list[socket.socket] = []
        try:
            for i in range(n):
                for j in range(3):
                    s = socket.socket()
                    socks.append(s)
                    s.bind(("127.0.0.1", base + 10 * i + j))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise NetworkError("no free range of loopback ports for the validators")


def _cometbft(*args: str) -> str:
    try:
        r = subprocess.run([str(engine.binary()), *args], capture_output=True, text=True,
                           timeout=120)
    except subprocess.TimeoutExpired:
        raise NetworkError(f"cometbft {' '.join(args)} did not finish in 120 s") from None
    if r.returncode != 0:
        raise NetworkError(f"cometbft {' '.join(args)} failed: {r.stderr.strip()[-300:]}")
    return r.stdout


def set_toml(text: str, section: str, key: str, value: Any) -> str:
    """`key = value` in `[section]` ("" for the top) of a CometBFT config.toml; the key must
    be there already (a renamed setting fails loudly instead of being ignored)."""
    literal = json.dumps(value) if isinstance(value, (str, bool)) else str(value)
    start = 0 if not section else text.find(f"\n[{section}]\n")
    if start < 0:
        raise NetworkError(f"config.toml has no [{section}] section")
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    body, n = re.subn(rf"(?m)^{re.escape(key)} = .*$", lambda _: f"{key} = {literal}",
                      text[start:end], count=1)
    if n != 1:
        raise NetworkError(f"config.toml has no {key} in [{section or 'top'}]")
    return text[:start] + body + text[end:]


def _configure(v: Validator, root: Path, peers: str, commit_ms: int, flush_ms: int) -> None:
    path = v.home(root) / "config" / "config.toml"
    t = path.read_text()
    for section, key, value in (
            ("", "proxy_app", f"unix://{v.socket(root)}"), ("", "moniker", v.name),
            ("", "abci", "socket"), ("", "log_level", "info"),
            ("rpc", "laddr", f"tcp://127.0.0.1:{v.rpc_port}"),
            ("p2p", "laddr", f"tcp://127.0.0.1:{v.p2p_port}"),
            ("p2p", "persistent_peers", peers), ("p2p", "addr_book_strict", False),
            ("p2p", "allow_duplicate_ip", True), ("p2p", "pex", False),
            ("p2p", "flush_throttle_timeout", f"{flush_ms}ms"),
            ("consensus", "create_empty_blocks", False),
            ("consensus", "timeout_commit", f"{commit_ms}ms"),
            ("consensus", "timeout_propose", "1s"),
            ("consensus", "skip_timeout_commit", False)):
        t = set_toml(t, section, key, value)
    path.write_text(t)


def create(root: Path, base_port: int, commit_ms: int = 200, n: int = 4,
           flush_ms: int = 10) -> Network:
    """Write a network of `n` validators (named for PARTIES) into the empty folder `root`.
    `commit_ms` is CometBFT's timeout_commit, `flush_ms` its p2p flush_throttle_timeout
    (CometBFT's default 100 ms holds every consensus message that long on a quiet link;
    docs/BENCHMARKS.md measured what each costs)."""
    if not 1 <= n <= len(PARTIES):
        raise NetworkError(f"--validators is 1 to {len(PARTIES)} (one per party), not {n}")
    if root.exists() and any(root.iterdir()):
        raise NetworkError(f"{root} is not empty; a network is written into a new folder")
    if not 1024 <= base_port <= 65535 - 10 * n:
        raise NetworkError(f"--base-port {base_port}: the ports base..base+{10 * n - 8} must "
                           "be between 1024 and 65535")
    root = root.resolve()
    vals = tuple(Validator(name, party, base_port + 10 * i, base_port + 10 * i + 1,
                           base_port + 10 * i + 2)
                 for i, (name, party) in enumerate(PARTIES[:n]))
    if not socket_fits(root):
        raise NetworkError(f"{root} is too deep a folder for a Unix socket path (at most "
                           f"{_SOCKET_MAX} bytes): choose a shorter --dir")
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _write(root, vals, commit_ms, flush_ms)
    except BaseException:  # no half-written network: the folder is empty again
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _write(root: Path, vals: tuple[Validator, ...], commit_ms: int, flush_ms: int) -> Network:
    dispatch_dir = vals[0].app_dir(root)
    dispatch_dir.mkdir(parents=True)
    key = datadir.create_key(dispatch_dir / "dispatch.key", dispatch_dir / "dispatch.pub",
                             "a chain is created once")
    t = int(time.time())
    genesis_tx = P.sign1(key, C.tx(key.id, 1, C.REGISTER, C.register_body(
        "dispatch", key.public_key.raw, "dispatch center"), t, key.id))
    ids = []
    for v in vals:
        _cometbft("init", "--home", str(v.home(root)))
        ids.append(_cometbft("show-node-id", "--home", str(v.home(root))).strip())
    chain_name = f"meterledger-{key.id.hex()}"
    genesis = _genesis(vals, root, chain_name, genesis_tx)
    for i, v in enumerate(vals):
        (v.home(root) / "config" / "genesis.json").write_text(genesis)
        peers = ",".join(f"{ids[j]}@127.0.0.1:{w.p2p_port}" for j, w in enumerate(vals)
                         if j != i)
        _configure(v, root, peers, commit_ms, flush_ms)
        app = v.app_dir(root)
        app.mkdir(parents=True, exist_ok=True)
        (app / CONSORTIUM).write_text(json.dumps({
            "name": v.name, "rpc": v.rpc_url, "socket": str(v.socket(root)),
            "network": str(root)}, indent=2) + "\n")
    (root / GENESIS).write_text(genesis)
    (root / NETWORK).write_text(json.dumps({
        "chain": key.id.hex(), "chain_name": chain_name,
        "validators": [asdict(v) for v in vals]}, indent=2) + "\n")
    return Network(root, key.id, chain_name, vals)


def _genesis(vals: tuple[Validator, ...], root: Path, chain_name: str, tx: bytes) -> str:
    g = json.loads((vals[0].home(root) / "config" / "genesis.json").read_text())
    g["chain_id"] = chain_name
    g["initial_height"] = "1"
    g["validators"] = []
    for v in vals:
        k = json.loads((v.home(root) / "config" / "priv_validator_key.json").read_text())
        g["validators"].append({"address": k["address"], "pub_key": k["pub_key"],
                                "power": str(POWER), "name": v.name})
    g["app_state"] = W.genesis_app_state(tx)
    return json.dumps(g, indent=2) + "\n"
