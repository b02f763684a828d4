"""python -m aggregator init | run | register | verify-chain | rules | suggestions | approve |
dismiss

    python -m aggregator init --data-dir D [--name NAME]
    python -m aggregator run --data-dir D [--host 127.0.0.1] [--http-port N] [--config F.toml]
    python -m aggregator register --data-dir D --role fog --pub HEX [--name N] [--chain URL]
    python -m aggregator verify-chain [--data-dir D] [--chain URL] [--pub HEX]
    python -m aggregator rules register FILE --data-dir D [--chain URL]
    python -m aggregator suggestions [--data-dir D | --chain URL] [--state open]
    python -m aggregator approve ID [--data-dir D | --chain URL] [--token-file F]
    python -m aggregator dismiss ID [--data-dir D | --chain URL] [--token-file F]

`run` prints `aggregator listening on URL` once it serves (--http-port 0 picks a free port;
https with --http-tls-cert and --http-tls-key) and stops cleanly on SIGTERM. Its API's
/metrics needs the data dir's auditor.token, approve and dismiss its dispatch.token (the
operator's); both are read again when replaced, so rotating one is replacing its file. `register` signs a register transaction with the dispatch key
(next nonce) and submits it: to --chain URL, else to the aggregator running on the data dir,
else (no aggregator running) straight into its chain.db. `verify-chain` replays the chain
from genesis (the data dir's chain.db, or --chain URL's blocks), checking it against the
trusted dispatch key (--pub, or the data dir's dispatch.pub): exit 0 with a summary line,
1 naming the first failure. A consortium validator's data dir (with consortium.json) or API
is replayed from its app's block records and state roots (aggregator.chain.verify_consortium),
pinned to the network's genesis.json; its dispatch.pub, if it has one, pins the key.

`rules register` signs a `rules` transaction (name and version from the file, which must
parse) and submits it like `register`. `suggestions` prints one JSON object per line.
`approve` and `dismiss` act on a suggestion: on the aggregator running on the data dir (or
at --chain URL) with the token of data_dir/dispatch.token (or --token-file), which signs the
instruction with its dispatch key; with no aggregator running, in the data dir directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft.network import CONSORTIUM, GENESIS
from aggregator.chain.backends.cometbft.node import ValidatorNode, is_validator_dir
from aggregator.chain.ledger import ChainError, Ledger, Receipt
from aggregator.chain.service import remote
from aggregator.chain.service.api import AggregatorAPI
from aggregator.chain.service.node import (
    CHAIN,
    KEY,
    PUB,
    TOKEN,
    URL,
    AggregatorConfig,
    ConfigError,
    ensure_tokens,
    init_data_dir,
    load_config,
    load_key,
    load_pub,
    lock_data_dir,
    open_ledger,
    read_token,
    read_url,
    write_url,
)
from aggregator.chain.store import SQLiteBlockStore
from aggregator.chain.verify import Replay, VerifyError, check_derived, store_blocks, verify_blocks
from aggregator.chain.verify_consortium import (
    Genesis,
    read_genesis,
    verify_consortium_remote,
    verify_consortium_store,
)
from aggregator.dispatch.rules import load_rules
from aggregator.dispatch.suggestions import Dispatcher, open_dispatcher, submit_signed
from meterledger import wire as P
from meterledger.errors import MeterLedgerError, ProtocolError
from meterledger.infra import config as cfg
from meterledger.infra import logs
from meterledger.infra.args import ArgumentParser
from meterledger.wire import chain as C

_RETRIES = 5  # register: fresh nonces to try when a concurrent transaction took ours


def run(config: AggregatorConfig) -> int:
    d = config.data_dir
    held = lock_data_dir(d)
    if held is None:
        raise ConfigError(f"another aggregator is running on {d}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ledger: Ledger | None = None
    api = dispatcher = node = None
    try:
        clock = config.clock()
        if is_validator_dir(d):  # a consortium validator: CometBFT orders the blocks
            node = ValidatorNode(d, CHAIN, config.commit_timeout_s)
            node.start()
            print(f"validator {node.name}: waiting for CometBFT ({node.rpc_url}) to connect",
                  flush=True)
            if not node.wait_genesis(stop):
                return 0
            ledger = node.ledger()
        else:
            ledger = open_ledger(d, clock)
        if (d / KEY).is_file():  # the dispatch center's node: suggestions and approvals
            dispatcher = open_dispatcher(ledger, load_key(d), d, clock)
        api = AggregatorAPI(ledger, clock, dispatcher, tokens=ensure_tokens(d),
                            limits=config.http_limits(), tls=config.http_tls(), ui=config.ui)
        port = api.start(config.host, config.http_port)
        host = "127.0.0.1" if config.host in ("", "0.0.0.0") else config.host
        url = f"{api.http.scheme}://{f'[{host}]' if ':' in host else host}:{port}"
        write_url(d, url)
        print(f"aggregator listening on {url}", flush=True)
        logging.getLogger("aggregator").info("chain %s, head %d, data %s",
                                             ledger.chain_id.hex(), ledger.head().height, d)
        while not stop.wait(0.5):
            pass
    finally:
        if api is not None:
            api.stop()
        if dispatcher is not None:
            dispatcher.store.close()
        if ledger is not None:
            ledger.close()
        if node is not None:
            node.close()
        (d / URL).unlink(missing_ok=True)
        held.close()
    print("aggregator stopped cleanly", flush=True)
    return 0


def register(d: Path, role: str, pub_hex: str, name: str, url: str | None) -> Receipt:
    key = load_key(d)
    try:
        pub = P.PublicKey(bytes.fromhex(pub_hex)).raw
    except ValueError as e:  # bytes.fromhex, or ProtocolError
        raise ConfigError(f"--pub: {e}") from None
    body = C.register_body(role, pub, name)
    return _submit(d, url, lambda nonce: P.sign1(
        key, C.tx(key.id, nonce, C.REGISTER, body, int(time.time()), key.id)))


def register_rules(d: Path, path: Path, url: str | None) -> tuple[str, int, bytes, Receipt]:
    """Sign and submit a `rules` transaction for the rule file at `path` (it must parse)."""
    rs = load_rules(path)
    key = load_key(d)
    body = C.rules_body(rs.name, rs.version, rs.text)
    r = _submit(d, url, lambda nonce: P.sign1(
        key, C.tx(key.id, nonce, C.RULES, body, int(time.time()), key.id)))
    return rs.name, rs.version, rs.digest, r


def _running_url(d: Path) -> str:
    url = read_url(d)
    if url is None:
        raise ConfigError(f"an aggregator runs on {d} but left no {URL}; pass --chain URL")
    return url


def _submit(d: Path, url: str | None, signed: Callable[[int], bytes]) -> Receipt:
    """Submit the dispatch key's transaction signed(nonce): to `url`, else to the aggregator
    running on the data dir, else (none runs) straight into its chain.db."""
    key = load_key(d)
    if url is None:
        held = lock_data_dir(d)
        if held is not None:  # nobody runs on the chain: apply it ourselves
            try:
                ledger = open_ledger(d, time.time)
                try:
                    return submit_signed(ledger, key, signed)
                finally:
                    ledger.close()
            finally:
                held.close()
        url = _running_url(d)
    for _ in range(_RETRIES):
        me = next((p for p in remote.get(url, "/v1/participants")["participants"]
                   if p["id"] == key.id.hex()), None)
        if me is None:
            raise ConfigError(f"the dispatch key {key.id_hex} is no participant of the chain "
                              f"at {url}")
        try:
            raw = signed(int(me["nonce"]) + 1)
        except ProtocolError as e:  # e.g. a role chaintx does not know
            raise ChainError(e.reason, str(e)) from None
        status, doc = remote.call(url, "/v1/tx", raw)
        if status == 200:
            return Receipt(bytes.fromhex(doc["digest"]), doc["height"], doc["index"])
        if status != 400 or doc.get("error") != "nonce_reused":
            raise ChainError(str(doc.get("error")), str(doc.get("detail", doc)))
    raise ChainError("nonce_reused", f"other transactions kept taking the dispatch key's next "
                                     f"nonce ({_RETRIES} tries)")


@contextmanager
def _local_dispatcher(d: Path) -> Iterator[Dispatcher | None]:
    """The data dir's dispatcher when no aggregator runs on it (None when one does)."""
    held = lock_data_dir(d)
    if held is None:
        yield None
        return
    try:
        ledger = open_ledger(d, time.time)
        try:
            dispatcher = open_dispatcher(ledger, load_key(d), d, time.time)
            try:
                yield dispatcher
            finally:
                dispatcher.store.close()
        finally:
            ledger.close()
    finally:
        held.close()


def suggestions(d: Path | None, url: str | None, state: str | None) -> list[dict[str, Any]]:
    if url is None:
        assert d is not None
        with _local_dispatcher(d) as dispatcher:
            if dispatcher is not None:
                return [s.as_json() for s in dispatcher.suggestions(state)]
        url = _running_url(d)
    listed: list[dict[str, Any]] = remote.get(
        url, "/v1/suggestions" + (f"?state={state}" if state else ""))["suggestions"]
    return listed


def decide(d: Path | None, url: str | None, token_file: Path | None, sid: str,
           action: str) -> dict[str, Any]:
    """Approve or dismiss suggestion `sid`; the API's answer (docs/PROTOCOL.md section 19)."""
    if url is None:
        assert d is not None
        with _local_dispatcher(d) as dispatcher:
            if dispatcher is not None:
                if action == "dismiss":
                    return dispatcher.dismiss(sid).as_json()
                dispatcher.refresh()
                r = dispatcher.approve(sid)
                return {"instruction": r.digest.hex(), "height": r.height, "index": r.index}
        url = _running_url(d)
    if token_file is None:
        if d is None:
            raise ConfigError(f"{action} over HTTP needs the dispatch token: --data-dir or "
                              "--token-file")
        token_file = d / TOKEN
    status, doc = remote.call(url, f"/v1/suggestions/{sid}/{action}", b"",
                              read_token(token_file))
    if status != 200:
        raise remote.RemoteError(f"{action} {sid}: {status} {doc.get('error')}: "
                                 f"{doc.get('detail', '')}")
    return doc


def verify_chain(d: Path | None, url: str | None, pub_hex: str | None) -> str:
    trusted: P.PublicKey | None = None
    if pub_hex is not None:
        try:
            trusted = P.PublicKey(bytes.fromhex(pub_hex))
        except ValueError as e:
            raise ConfigError(f"--pub: {e}") from None
    elif d is not None and (not is_validator_dir(d) or (d / PUB).is_file()):
        trusted = load_pub(d)  # a validator's dir holds it only at the dispatch center
    if url is not None:
        head = remote.get(url, "/v1/head")
        if head.get("engine") == "cometbft":
            return verify_consortium_remote(remote.blocks(url), head, trusted).line()
        return verify_blocks(remote.blocks(url), trusted).summary().line()
    assert d is not None
    held = lock_data_dir(d)  # None: an aggregator is running; its derived state moves on
    try:
        store = SQLiteBlockStore(d / CHAIN, readonly=True)
        try:
            if is_validator_dir(d):
                return verify_consortium_store(store, trusted, _network_genesis(d),
                                               derived=held is not None).line()
            replay: Replay = verify_blocks(store_blocks(store), trusted)
            if held is not None:
                check_derived(store, replay)
        finally:
            store.close()
    finally:
        if held is not None:
            held.close()
    return replay.summary().line()


def _network_genesis(d: Path) -> Genesis | None:
    """The genesis.json of the network a validator's data dir belongs to (consortium.json's
    `network` folder), None when it names none or the file is not there."""
    try:
        folder = json.loads((d / CONSORTIUM).read_text()).get("network")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"{d / CONSORTIUM} cannot be read: {e}") from None
    path = Path(folder) / GENESIS if isinstance(folder, str) else None
    return read_genesis(path) if path is not None and path.is_file() else None


def consortium(args: argparse.Namespace) -> int:
    from aggregator.chain.backends.cometbft import network, supervise

    if args.cmd == "testnet":
        if args.commit_timeout_ms < 0 or args.flush_ms < 1:
            raise ConfigError("--commit-timeout-ms must not be negative and --flush-ms at "
                              "least 1")
        net = network.create(args.dir, args.base_port, args.commit_timeout_ms,
                             args.validators, args.flush_ms)
        print(f"consortium {net.chain_name} in {net.root}: "
              + ", ".join(f"{v.name} (API {v.api_url})" for v in net.validators))
        print(f"start it: meterledger chain up --dir {net.root}")
        return 0
    net = network.load(args.dir)
    if args.cmd == "up":
        return supervise.up(net)
    rows = supervise.status(net)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(supervise.format_status(rows))
    return 0 if any(r["up"] for r in rows) else 1


# long: the argparse tree of every subcommand, then one dispatch
def main(argv: list[str] | None = None, prog: str = "python -m aggregator") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    data_help = "the chain node's data directory (made by init: dispatch key, chain.db, tokens)"
    chain_help = ("the running chain node's URL, e.g. http://127.0.0.1:8090 (no scheme: "
                  "http); without it the data dir's chain.db is used directly")
    p = sub.add_parser("init", help="create the dispatch key and the chain's genesis block")
    p.add_argument("--data-dir", type=Path, required=True, help=data_help)
    p.add_argument("--name", default="dispatch",
                   help="the dispatch center's name on the chain (default: dispatch)")
    p = sub.add_parser("run", help="serve the chain's HTTP API")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML file ([aggregator] table); a flag overrides the file "
                        "(example: docs/examples/chain.toml)")
    cfg.add_flags(p, AggregatorConfig)
    p = sub.add_parser("register", help="register a participant (signed by the dispatch key)")
    p.add_argument("--data-dir", type=Path, required=True,
                   help=data_help + "; its dispatch key signs")
    p.add_argument("--role", required=True, choices=C.ROLES,
                   help="what the participant may do on the chain: " + ", ".join(C.ROLES))
    p.add_argument("--pub", required=True, help="SEC1 public key, 130 hex characters (a "
                   "fog's: the `fog pub` line of `meterledger fog init`, or DATA_DIR/fog.pub)")
    p.add_argument("--name", default="", help="a name shown beside its id (default: none)")
    p.add_argument("--chain", help=chain_help)
    p = sub.add_parser("verify-chain", help="replay the chain from genesis and check it")
    p.add_argument("--data-dir", type=Path, help=data_help)
    p.add_argument("--chain", help="verify a running chain node's blocks over HTTP (its URL)")
    p.add_argument("--pub", help="the trusted dispatch key, 130 hex (default: the data dir's "
                                 "dispatch.pub)")
    p = sub.add_parser("rules", help="rule sets on the chain")
    rsub = p.add_subparsers(dest="rules_cmd", required=True)
    p = rsub.add_parser("register", help="register a rule file (signed by the dispatch key)")
    p.add_argument("file", type=Path, help="the rule file, TOML (docs/examples/rules.toml)")
    p.add_argument("--data-dir", type=Path, required=True,
                   help=data_help + "; its dispatch key signs")
    p.add_argument("--chain", help=chain_help)
    p = sub.add_parser("suggestions", help="list suggestions (JSON lines)")
    p.add_argument("--data-dir", type=Path, help=data_help)
    p.add_argument("--chain", help=chain_help)
    p.add_argument("--state", choices=("open", "approved", "dismissed"),
                   help="only suggestions in this state (default: all)")
    p.add_argument("--ids", action="store_true",
                   help="print only the suggestions' ids, one a line (for approve/dismiss)")
    for name, what in (("approve", "sign and submit a suggestion's instruction"),
                       ("dismiss", "dismiss a suggestion")):
        p = sub.add_parser(name, help=what)
        p.add_argument("id", help="the suggestion's id (64 hex characters: the `id` of "
                                  "`meterledger chain suggestions`)")
        p.add_argument("--data-dir", type=Path, help=data_help)
        p.add_argument("--chain", help=chain_help)
        p.add_argument("--token-file", type=Path,
                       help="the dispatch token, with --chain (default: DATA_DIR/dispatch.token)")
    net_help = "the network's folder (written by `testnet`)"
    p = sub.add_parser("testnet", help="write a consortium network of CometBFT validators on "
                                       "this machine's loopback (docs/DEPLOY.md)")
    p.add_argument("--dir", type=Path, required=True, help="a new or empty folder to write it in")
    p.add_argument("--validators", type=int, default=4,
                   help="how many validators, one per party: dispatch center, provincial "
                        "regulator, national regulator, power plant (default: 4)")
    p.add_argument("--base-port", type=int, default=26600,
                   help="validator i uses base+10i (p2p), +1 (CometBFT RPC), +2 (the HTTP "
                        "API) (default: 26600)")
    p.add_argument("--commit-timeout-ms", type=int, default=200,
                   help="CometBFT's timeout_commit: the pause after a block (default: 200)")
    p.add_argument("--flush-ms", type=int, default=10,
                   help="CometBFT's p2p flush_throttle_timeout: how long a peer link holds "
                        "messages to send them together (default: 10)")
    p = sub.add_parser("up", help="start a testnet's validators and stop them on Ctrl-C")
    p.add_argument("--dir", type=Path, required=True, help=net_help)
    p = sub.add_parser("status", help="a testnet's validators: up, height, who signed")
    p.add_argument("--dir", type=Path, required=True, help=net_help)
    p.add_argument("--json", action="store_true", help="one JSON object per validator")
    for p in [*sub.choices.values(), *rsub.choices.values()]:
        logs.add_arguments(p)
    args = ap.parse_args(argv)
    logs.from_arguments(args)
    try:
        if args.cmd == "init":
            key = init_data_dir(args.data_dir, int(time.time()), args.name)
            print(f"chain {key.id_hex}\ndispatch pub {key.public_key.raw.hex()}")
        elif args.cmd == "run":
            flags = cfg.flag_values(args, AggregatorConfig)
            return run(load_config(args.config, flags))
        elif args.cmd in ("testnet", "up", "status"):
            return consortium(args)
        elif args.cmd == "register":
            r = register(args.data_dir, args.role, args.pub, args.name, args.chain)
            pid = P.party_id(bytes.fromhex(args.pub)).hex()
            print(f"registered {args.role} {pid} in block {r.height} at index {r.index} "
                  f"(tx {r.digest.hex()})")
        elif args.cmd == "rules":
            name, version, digest, r = register_rules(args.data_dir, args.file, args.chain)
            print(f"registered rule set {name} v{version} ({digest.hex()}) in block {r.height} "
                  f"at index {r.index} (tx {r.digest.hex()})")
        elif args.cmd in ("suggestions", "approve", "dismiss"):
            if args.data_dir is None and args.chain is None:
                ap.error(f"{args.cmd} needs --data-dir or --chain")
            if args.cmd == "suggestions":
                for doc in suggestions(args.data_dir, args.chain, args.state):
                    print(doc["id"] if args.ids else json.dumps(doc))
            else:
                doc = decide(args.data_dir, args.chain, args.token_file, args.id, args.cmd)
                print(json.dumps(doc))
        else:
            if args.data_dir is None and args.chain is None:
                ap.error("verify-chain needs --data-dir or --chain")
            print(verify_chain(args.data_dir, args.chain, args.pub))
        return 0
    except VerifyError as e:
        print(f"verify-chain FAILED: {e}")
        return 1
    except MeterLedgerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
