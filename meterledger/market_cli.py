"""`meterledger market`: a participant of the peer-to-peer market and grid access
(docs/PROTOCOL.md section 27), over the chain's HTTP API.

    meterledger market keygen --key FILE
    meterledger market apply   --chain URL --key FILE [--source S] [--nature N] [--supply-w W]
                               [--price P] [--safety K] [--voltage-v V]
    meterledger market order   --chain URL --key FILE --cycle C --side buy|sell --wh WH
                               --price P [--fee-max F] [--green]
    meterledger market cancel  --chain URL --key FILE --cycle C --side buy|sell
    meterledger market commit  --chain URL --key FILE --cycle C --side ... --wh ... --price ...
                               [--fee-max F] [--green] [--sealed FILE]
    meterledger market reveal  --chain URL --key FILE --cycle C [--sealed FILE]
    meterledger market clear|settle CYCLE --chain URL --key FILE
    meterledger market sign CYCLE N --chain URL --key FILE
    meterledger market review CYCLE N --good|--bad --chain URL --key FILE
    meterledger market transfer --to PARTICIPANT --upt N --chain URL --key FILE
    meterledger market book|contracts|cycle CYCLE --chain URL [--json]
    meterledger market account|access [--participant ID | --key FILE] --chain URL [--json]
    meterledger market network --chain URL [--json]
    meterledger market agent --chain URL --key FILE (--side buy|sell --price P | --operator)

A transaction is signed with the participant's key (FILE: a hex P-256 private key, as
`keygen` writes it; the chain's operator registers its public key with role `market`:
`meterledger chain register --role market --pub HEX`) under its next nonce (its last on the
chain + 1, tried again when a concurrent transaction took it) and submitted to --chain.
Units: energy in Wh, prices in mpt/kWh, points in micro-points (upt; 1 point = 10^6 upt);
a cycle is named by its start (unix seconds, a multiple of the market's cycle_s).

`commit` draws a random 32-byte salt, commits the digest of the order (sealed market) and
keeps the order and its salt in --sealed (default: KEY_FILE.CYCLE.sealed.json, mode 0600),
which `reveal` sends in the reveal window after the gate. Reads print text, or the API's
answer with --json. Exit status: 0; 1 when the chain refuses (or a grid-access request is
refused) or cannot be reached; 2 with one line on stderr for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterledger import errors, market_agent_cli
from meterledger import wire as P
from meterledger.clients.chain import (
    ChainClient,
    ChainClientError,
    ChainRefused,
    Receipt,
    Sender,
)
from meterledger.errors import ConfigError, ProtocolError
from meterledger.infra import datadir
from meterledger.infra.args import ArgumentParser
from meterledger.market_show import READS, pid_arg, show_access
from meterledger.wire import market as MK

_R = MK.BODY_RANGES


def _uint(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{n} is not in [{lo}, {hi}]")
        return n
    return parse


CYCLE = _uint(*_R[MK.MK_ORDER][1])
CONTRACT_N = _uint(*_R[MK.MK_SIGN][2])


# -- the parser ---------------------------------------------------------------------------------
def _chain_flags(p: argparse.ArgumentParser, key: str | None, signs: bool = True) -> None:
    """--chain, --key (`key`: its help; None: no key; required when it `signs`), the token
    and CA flags, --json."""
    connection_flags(p)
    if key is not None:
        p.add_argument("--key", type=Path, required=signs, metavar="FILE", help=key)
    p.add_argument("--json", action="store_true",
                   help="print the API's answer (a read) or the receipt as JSON")


def connection_flags(p: argparse.ArgumentParser) -> None:
    """--chain, and the bearer token and CA flags of a chain client's command."""
    p.add_argument("--chain", required=True, help="the chain's API URL, e.g. "
                   "http://127.0.0.1:8090 (no scheme: http)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--token-file", type=Path, metavar="FILE",
                   help="file holding a bearer token for the chain's API, if it asks one "
                        "(its reads and POST /v1/tx are public)")
    g.add_argument("--token", metavar="TOKEN", help="the bearer token itself (visible to "
                   "other local users in the process list: prefer --token-file)")
    p.add_argument("--ca-file", type=Path, metavar="FILE",
                   help="CA certificate (PEM) the chain's https certificate must chain to "
                        "(default: the system's CAs)")


SIGNER = "the participant's private key file (hex, as `keygen` writes it); it signs"


def _order_flags(p: argparse.ArgumentParser, sealed: bool) -> None:
    o = _R[MK.MK_ORDER]
    p.add_argument("--cycle", type=CYCLE, required=True,
                   help="the cycle's start, unix seconds (a multiple of cycle_s)")
    p.add_argument("--side", choices=MK.SIDES, required=True, help="buy or sell")
    p.add_argument("--wh", type=_uint(*o[3]), required=True, help="energy, Wh")
    p.add_argument("--price", type=_uint(*o[4]), required=True,
                   help="the bid's highest or the ask's lowest price, mpt/kWh")
    p.add_argument("--fee-max", type=_uint(*o[5]), default=0,
                   help="the congestion fee accepted on top, mpt/kWh (default 0)")
    p.add_argument("--green", action="store_true",
                   help="with its green certificates: a green bid takes only green asks, a "
                        "green ask needs as many Wh of the seller's active certificates, and "
                        "the delivered Wh's certificates move to the buyer at settlement")
    if sealed:
        _sealed_flag(p)


def _sealed_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sealed", type=Path, metavar="FILE",
                   help="the sealed order and its salt (default: KEY_FILE.CYCLE.sealed.json)")


def _tx_parsers(sub: Any) -> None:
    p = sub.add_parser("keygen", help="make a participant key (FILE, mode 0600) and print its "
                                      "public key for the operator to register")
    p.add_argument("--key", type=Path, required=True, metavar="FILE",
                   help="the new private key file (FILE.pub gets the public key)")
    a = _R[MK.MK_ACCESS]
    p = sub.add_parser("apply", help="request grid access (mk_access): the chain decides")
    p.add_argument("--source", choices=MK.SOURCES, help="the energy source")
    p.add_argument("--nature", choices=MK.NATURES, help="the energy's nature")
    p.add_argument("--supply-w", type=_uint(*a[3]), help="the supply capacity, W")
    p.add_argument("--price", type=_uint(*a[4]), help="the price asked, mpt/kWh")
    p.add_argument("--safety", type=_uint(*a[5]),
                   help="the safety class: 0 none, 1 type-tested, 2 certified by an "
                        "accredited lab, 3 and inspected on site, 4 and under a periodic "
                        "inspection contract")
    p.add_argument("--voltage-v", type=_uint(*a[6]), help="the connection voltage, V")
    _chain_flags(p, SIGNER)
    for name, what, sealed in (
            ("order", "place or re-quote a limit order (continuous market: mk_order)", False),
            ("commit", "commit a sealed order (sealed market: mk_commit); keeps it for "
                       "`reveal`", True)):
        p = sub.add_parser(name, help=what)
        _order_flags(p, sealed)
        _chain_flags(p, SIGNER)
    p = sub.add_parser("cancel", help="withdraw what is left of an order (mk_cancel)")
    p.add_argument("--cycle", type=CYCLE, required=True, help="the cycle's start")
    p.add_argument("--side", choices=MK.SIDES, required=True, help="buy or sell")
    _chain_flags(p, SIGNER)
    p = sub.add_parser("reveal", help="reveal the order `commit` kept (mk_reveal)")
    p.add_argument("--cycle", type=CYCLE, required=True, help="the cycle's start")
    _sealed_flag(p)
    _chain_flags(p, SIGNER)
    for name, what in (("clear", "close a cycle after its gate (mk_clear)"),
                       ("settle", "settle a closed cycle after delivery (mk_settle)")):
        p = sub.add_parser(name, help=what)
        p.add_argument("cycle", type=CYCLE, help="the cycle's start")
        _chain_flags(p, SIGNER)
    for name, what in (("sign", "sign a matched contract (mk_sign)"),
                       ("review", "review the other party of a delivered contract")):
        p = sub.add_parser(name, help=what)
        p.add_argument("cycle", type=CYCLE, help="the cycle's start")
        p.add_argument("n", type=CONTRACT_N, help="the contract's number in the cycle")
        if name == "review":
            g = p.add_mutually_exclusive_group(required=True)
            g.add_argument("--good", action="store_true", help="a good trade")
            g.add_argument("--bad", action="store_true", help="not a good trade")
        _chain_flags(p, SIGNER)
    p = sub.add_parser("transfer", help="give points to another participant (mk_transfer)")
    p.add_argument("--to", type=pid_arg, required=True,
                   help="the recipient's participant id, 16 hex characters")
    p.add_argument("--upt", type=_uint(*_R[MK.MK_TRANSFER][2]), required=True,
                   help="micro-points (1 point = 1000000 upt)")
    _chain_flags(p, SIGNER)


def _read_parsers(sub: Any) -> None:
    for name, what in (("book", "a cycle's orders (and a sealed cycle's commitments)"),
                       ("contracts", "a cycle's contracts")):
        p = sub.add_parser(name, help=what)
        p.add_argument("cycle", type=CYCLE, help="the cycle's start")
        if name == "book":
            p.add_argument("--side", choices=MK.SIDES, help="only this side")
            p.add_argument("--after", metavar="SIDE:ID",
                           help="page on: the `more: --after` of the previous page")
        else:
            p.add_argument("--after", type=CONTRACT_N, metavar="N",
                           help="page on: only the contracts numbered above N")
        p.add_argument("--limit", type=_uint(1, 1000), help="at most this many (default 100)")
        _chain_flags(p, None)
    p = sub.add_parser("cycle", help="a cycle's state, CEP, lowest price and timeline")
    p.add_argument("cycle", type=CYCLE, help="the cycle's start")
    _chain_flags(p, None)
    for name, what in (("account", "points (balance, held, owed) and reputation"),
                       ("access", "the latest grid-access decision")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--participant", type=pid_arg,
                       help="whose (16 hex characters; default: the --key's)")
        _chain_flags(p, "the participant's key file: whose, without --participant", False)
    p = sub.add_parser("network", help="the published network and the grid operator")
    _chain_flags(p, None)


def parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _tx_parsers(sub)
    _read_parsers(sub)
    market_agent_cli.add_parser(sub, lambda p: _chain_flags(p, SIGNER))
    return ap


# -- the session --------------------------------------------------------------------------------
def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        return datadir.read_secret(args.token_file, "token")
    if args.token is not None and not args.token.strip():
        raise ConfigError("--token is empty")
    return None if args.token is None else str(args.token).strip()


def read_key(path: Path) -> P.SigningKey:
    return datadir.read_key(path, "participant key",
                            f"make one with `meterledger market keygen --key {path}`")


@dataclass
class Session:
    """The chain at --chain and, for a transaction, the participant's key."""

    client: ChainClient
    key: P.SigningKey | None
    json: bool

    @classmethod
    def of(cls, args: argparse.Namespace) -> Session:
        client = ChainClient(args.chain, token=_token(args), ca_file=args.ca_file)
        key = read_key(args.key) if getattr(args, "key", None) is not None else None
        return cls(client, key, args.json)

    def signer(self) -> P.SigningKey:
        assert self.key is not None  # the parser requires --key of a transaction
        return self.key

    def send(self, kind: str, body: dict[int, Any]) -> Receipt:
        """Sign `kind` with the key under its next nonce and submit it (Sender)."""
        chain = bytes.fromhex(self.client.head()["chain"])
        return Sender(self.client, self.signer(), chain).send(kind, body, int(time.time()))

    def done(self, kind: str, r: Receipt, extra: dict[str, Any] | None = None) -> None:
        if self.json:
            print(json.dumps({"kind": kind, "digest": r.digest.hex(), "height": r.height,
                              "index": r.index, **(extra or {})}))
        else:
            print(f"{kind} accepted in block {r.height} at index {r.index} "
                  f"(tx {r.digest.hex()})")


# -- the transactions ---------------------------------------------------------------------------
def keygen(args: argparse.Namespace) -> int:
    key = datadir.create_key(args.key, args.key.with_name(args.key.name + ".pub"),
                             "a participant keeps its key (another file for another key)")
    print(f"participant {key.id_hex}\npub {key.public_key.raw.hex()}")
    return 0


def apply(s: Session, args: argparse.Namespace) -> int:
    body = MK.access_body(args.source, args.nature, args.supply_w, args.price, args.safety,
                          args.voltage_v)
    r = s.send(MK.MK_ACCESS, body)
    doc = s.client.market_access(s.signer().id_hex)
    dec = doc["decision"] or {}
    if s.json:
        s.done(MK.MK_ACCESS, r, {"decision": dec})
    else:
        s.done(MK.MK_ACCESS, r)
        show_access(doc)
    return 0 if dec.get("granted") else 1


def sealed_path(args: argparse.Namespace) -> Path:
    if args.sealed is not None:
        return Path(args.sealed)
    return Path(args.key).with_name(f"{Path(args.key).name}.{args.cycle}.sealed.json")


def _write_new(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists: a sealed order for this cycle is kept there "
                          "already (reveal it; a participant commits once a cycle; remove it "
                          "only if `book` lists no commitment of yours)") from None
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def commit(s: Session, args: argparse.Namespace) -> int:
    key, path = s.signer(), sealed_path(args)
    salt = secrets.token_bytes(32)
    digest = MK.commit_digest(key.id, args.cycle, args.side, args.wh, args.price,
                              args.fee_max, salt, int(args.green))
    kept = {"participant": key.id_hex, "cycle": args.cycle, "side": args.side, "wh": args.wh,
            "price": args.price, "fee_max": args.fee_max, "salt": salt.hex(),
            "green": int(args.green), "digest": digest.hex()}
    _write_new(path, json.dumps(kept, indent=1) + "\n")  # first: a landed commit keeps it
    try:
        r = s.send(MK.MK_COMMIT, MK.commit_body(args.cycle, digest))
    except (ChainRefused, ConfigError, ProtocolError):
        path.unlink()  # nothing was committed: nothing to keep (unreachable: it may have been)
        raise
    s.done(MK.MK_COMMIT, r, {"sealed": str(path), "digest": digest.hex()})
    if not s.json:
        print(f"sealed order kept in {path}: reveal it after the gate with "
              f"`meterledger market reveal --cycle {args.cycle}`")
    return 0


def _load_sealed(path: Path, key: P.SigningKey, cycle: int) -> dict[str, Any]:
    try:
        kept = json.loads(path.read_text())
        salt = bytes.fromhex(kept["salt"])
        order = (kept["side"], int(kept["wh"]), int(kept["price"]), int(kept["fee_max"]))
        green = int(kept.get("green", 0))
        digest = MK.commit_digest(key.id, cycle, *order, salt, green)
        ok = (kept["participant"] == key.id_hex and kept["cycle"] == cycle
              and digest.hex() == kept["digest"])
    except FileNotFoundError:
        raise ConfigError(f"no sealed order at {path} (`commit` keeps it; --sealed)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a sealed order `commit` kept: {e}") from None
    if not ok:
        raise ConfigError(f"{path} holds no sealed order of {key.id_hex} for cycle {cycle}")
    return {"side": order[0], "wh": order[1], "price": order[2], "fee_max": order[3],
            "salt": salt, "green": green}


def reveal(s: Session, args: argparse.Namespace) -> int:
    o = _load_sealed(sealed_path(args), s.signer(), args.cycle)
    r = s.send(MK.MK_REVEAL, MK.reveal_body(args.cycle, o["side"], o["wh"], o["price"],
                                            o["fee_max"], o["salt"], bool(o["green"])))
    s.done(MK.MK_REVEAL, r)
    return 0


def sign(s: Session, args: argparse.Namespace) -> int:
    """Sign a contract's terms as the chain holds them (the signature names them, so a
    trade's proof shows what was agreed)."""
    c = s.client.market_contract(args.cycle, args.n)
    terms = MK.contract_terms(args.cycle, args.n, c)
    s.done(MK.MK_SIGN, s.send(MK.MK_SIGN, MK.sign_body(args.cycle, args.n, terms)))
    return 0


def _simple(kind: str, body: Callable[[argparse.Namespace], dict[int, Any]]) -> Handler:
    def run(s: Session, args: argparse.Namespace) -> int:
        s.done(kind, s.send(kind, body(args)))
        return 0
    return run


Handler = Callable[[Session, argparse.Namespace], int]
TXS: dict[str, Handler] = {
    "apply": apply, "commit": commit, "reveal": reveal,
    "order": _simple(MK.MK_ORDER, lambda a: MK.order_body(a.cycle, a.side, a.wh, a.price,
                                                          a.fee_max, a.green)),
    "cancel": _simple(MK.MK_CANCEL, lambda a: MK.cancel_body(a.cycle, a.side)),
    "clear": _simple(MK.MK_CLEAR, lambda a: MK.cycle_body(a.cycle)),
    "settle": _simple(MK.MK_SETTLE, lambda a: MK.cycle_body(a.cycle)),
    "sign": sign,
    "review": _simple(MK.MK_REVIEW, lambda a: MK.review_body(a.cycle, a.n, a.good)),
    "transfer": _simple(MK.MK_TRANSFER, lambda a: MK.transfer_body(bytes.fromhex(a.to),
                                                                   a.upt)),
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None, prog: str = "python -m meterledger.market_cli") -> int:
    args = parser(prog).parse_args(argv)
    return exit_status(f"{prog} {args.cmd}", lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    try:
        if args.cmd == "keygen":
            return keygen(args)
        s = Session.of(args)
        if args.cmd == "agent":
            sender = Sender(s.client, s.signer(), bytes.fromhex(s.client.head()["chain"]))
            return market_agent_cli.run(s.client, sender, args)
        if args.cmd in TXS:
            return TXS[args.cmd](s, args)
        return READS[args.cmd](s.client, s.key, args)
    except KeyboardInterrupt:
        return 0  # an agent stopped by Ctrl-C


def exit_status(me: str, command: Callable[[], int]) -> int:
    """Run a chain client's command: its own status, or one line on stderr and 2 for what
    the user gave, 1 when the chain refuses it or a service cannot be reached."""
    try:
        return command()
    except (ConfigError, ProtocolError, ValueError) as e:  # what the user gave
        print(f"error: {me}: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except ChainRefused as e:
        print(f"error: {me}: the chain refused it: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except (ChainClientError, errors.UnavailableError) as e:
        print(f"error: {me}: {_one_line(str(e))}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
