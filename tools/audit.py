"""Proof bundles: one JSON file that proves one reading, from the meter to the dispatch chain.

    python -m tools.audit bundle --fog URL --chain URL --dev HEX --seq N -o FILE \
        [--token-file FOG_DATA/auditor.token | --token T] [--ca-file CA.pem]
    python -m tools.audit verify FILE --trust DISPATCH_PUBHEX [--trust ...] [--format json]
    python -m tools.audit verify FILE --validators GENESIS.json [--format json]
    python -m tools.audit decode FILE [--format json|text]
    python -m tools.audit certificate-bundle --fog URL --chain URL --certificate ID -o FILE ...
    python -m tools.audit certificate FILE --trust DISPATCH_PUBHEX [--trust ...]
    python -m tools.audit trade-bundle --fog URL --chain URL --cycle C --contract N -o FILE ...
    python -m tools.audit trade FILE --trust DISPATCH_PUBHEX [--trust ...]
    python -m tools.audit bill-bundle --fog URL --chain URL --bill BILL.json -o FILE ...
    python -m tools.audit bill FILE --trust DISPATCH_PUBHEX [--trust ...]

`certificate-bundle` and `certificate` do the same for one green certificate, from its
meter's readings to the chain (tools/audit_certificate.py); `trade-bundle` and `trade` for
one settled market contract, from its orders to its settlement (tools/audit_trade.py);
`bill-bundle` and `bill` for one bill, from its readings to its receipt, rerun to the cent
(tools/audit_bill.py).

`bundle` asks the fog for the reading's inclusion proof and the device list, which are its
API's auditor tier: give it the fog's auditor token (--token-file, the fog data dir's
auditor.token); what it asks the chain is public.

`verify` needs no network: the bundle and the trusted dispatch-chain key(s) are enough
(SPEC section 9); a consortium's bundle (version 2) is checked against the validator set of
the network's genesis.json instead (tools/audit_consortium.py). It runs the checks below in order and exits 0 with a short summary, or 1
naming the first check that failed; 2 is a usage or input error, and so is a file that is no
bundle (not JSON, nested too deep, a wrong shape or type anywhere, check `format`), with one
line naming what is wrong.

The bundle's checkpoint is the *head* of an anchor (docs/PROTOCOL.md section 15): the
newest checkpoint an anchor transaction carries, whose root the chain tied to everything
the fog anchored before through a consistency proof.

`decode` shows every message a bundle holds (the reading, the enrollment decision, the
checkpoint, the anchor transaction with the checkpoints and aggregates it carries, the block
header) by name, with units and UTC times, as `tools.reading decode` does; it checks nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from meterledger import errors
from meterledger import wire as P
from meterledger.clients.bundle import BUNDLE_VERSION as BUNDLE_VERSION
from meterledger.clients.bundle import build_bundle as build_bundle
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.clients.fog import FogClient
from meterledger.infra import datadir
from meterledger.infra.args import ArgumentParser
from meterledger.wire import chain as C
from meterledger.wire import merkle
from tools import audit_consortium as consortium

R = TypeVar("R")

# (check name, what it establishes), in the order verify runs them
CHECKS = (
    ("format", "the bundle has every field and no other, as hex, hashes and integers of the "
               "right size (a failure is an input error: exit 2)"),
    ("device_id", "the meter id is the id of device_pub"),
    ("reading_signature", "the reading is a type-1 message signed by device_pub"),
    ("fog_id", "the checkpoint is signed by the id of fog_pub"),
    ("enrollment", "a type-8 decision signed by the fog enrolled this meter and key as active"),
    ("enrollment_order", "the enrollment entry precedes the reading in the log"),
    ("checkpoint_signature", "the checkpoint is a type-6 message signed by fog_pub"),
    ("tree_size", "tree_size is the checkpoint's size"),
    ("reading_inclusion", "the reading is entry leaf_index of the checkpoint's tree"),
    ("enrollment_inclusion", "the enrollment decision is in the same tree"),
    ("anchor_signature", "the anchor is a type-12 anchor transaction signed by fog_pub"),
    ("anchor_head", "the anchor's newest checkpoint is this checkpoint"),
    ("block_signature", "the block header is a type-13 message signed by a trusted key"),
    ("block_height", "the block header has the bundle's block height"),
    ("chain_id", "transaction and block belong to the same chain"),
    ("tx_inclusion", "the anchor is transaction tx_index of the sealed block"),
)


def checks_of(r: Verified) -> tuple[tuple[str, str], ...]:
    """The checks a verified bundle passed: the sealer's, or the consortium's."""
    if r.engine == "embedded":
        return CHECKS
    cut = [name for name, _ in CHECKS].index("block_signature")
    return CHECKS[:cut] + consortium.CHECKS


class BundleError(errors.MeterLedgerError, ValueError):
    """A failed check; `check` is its name in CHECKS."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


# --- bundle ----------------------------------------------------------------------------------
# built in meterledger.clients.bundle (the fog's GET /v1/bundle builds the same document);
# `build_bundle` and BUNDLE_VERSION stay importable from here for the tool's callers


# --- verify ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verified:
    dev: str
    seq: int
    t: int
    imp: int
    exp: int
    leaf_index: int
    tree_size: int
    fog: str
    checkpoint_height: int
    block_height: int
    sealer: str  # the sealer's id, or who committed it: "3 of 4 validators (30/40 power)"
    engine: str = "embedded"  # or "cometbft": a consortium's bundle


class BundleFormatError(BundleError):
    """Input that is no bundle: not JSON, nested too deep, or a wrong shape or type anywhere
    (check "format"). The CLI exits 2 for it, 1 for a bundle that fails a later check."""

    def __init__(self, detail: str) -> None:
        super().__init__("format", detail)


MAX_BUNDLE = 1 << 20  # bytes a bundle file may have; a real one is under 64 KiB
MAX_PATH = 64  # hashes in an inclusion path: a tree of up to 2^64 entries
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
# every key of a version-1 bundle and the kind of its value (a nested table: an object)
SHAPE: dict[str, Any] = {
    "version": "uint", "reading": "hex", "device_pub": "hex",
    "enrollment": {"entry": "hex", "leaf_index": "uint", "inclusion_path": "path"},
    "leaf_index": "uint", "tree_size": "uint", "inclusion_path": "path", "checkpoint": "hex",
    "fog_pub": "hex",
    "anchor": {"block_height": "uint", "block_header": "hex", "sealer_signature": "hex",
               "transaction": "hex", "tx_index": "uint", "tx_path": "path"},
}
SHAPE_CONSORTIUM: dict[str, Any] = {**SHAPE, "anchor": consortium.ANCHOR_SHAPE}


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _value(path: str, kind: str, v: Any) -> Any:
    """The value at `path` converted from its JSON form; BundleFormatError naming it."""
    if kind == "uint":
        if v.__class__ is int and 0 <= v < 2**63:
            return v
        raise BundleFormatError(f"{path} must be an integer in [0, 2^63-1], not {_show(v)}")
    if kind == "object":  # CometBFT's own JSON, read by meterledger.wire.cometbft
        if isinstance(v, dict):
            return v
        raise BundleFormatError(f"{path} must be a JSON object, not {_show(v)}")
    if kind == "hex":
        if isinstance(v, str) and _HEX.fullmatch(v):
            return bytes.fromhex(v)
        raise BundleFormatError(f"{path} must be a string of hex byte pairs, not {_show(v)}")
    if not isinstance(v, list) or len(v) > MAX_PATH:
        raise BundleFormatError(f"{path} must be a list of at most {MAX_PATH} hashes, not "
                                f"{_show(v)}")
    out = []
    for i, h in enumerate(v):
        if not (isinstance(h, str) and len(h) == 64 and _HEX.fullmatch(h)):
            raise BundleFormatError(f"{path}[{i}] must be a 32-byte hash as 64 hex "
                                    f"characters, not {_show(h)}")
        out.append(bytes.fromhex(h))
    return out


def read_fields(doc: Any, shape: dict[str, Any] = SHAPE, at: str = "") -> dict[str, Any]:
    """Every field of a bundle by its dotted path, converted (hex to bytes, paths to lists of
    hashes); BundleFormatError for a wrong shape or type anywhere, or an unknown key."""
    what = at.rstrip(".") or "the bundle"
    if not isinstance(doc, dict):
        raise BundleFormatError(f"{what} must be a JSON object, not {type(doc).__name__}")
    for key in doc:
        if key not in shape:
            raise BundleFormatError(f"{at}{_show(key)}: unknown key in {what} (it has "
                                    f"{', '.join(shape)})")
    out: dict[str, Any] = {}
    for key, kind in shape.items():
        if key not in doc:
            raise BundleFormatError(f"missing {at}{key}")
        if isinstance(kind, dict):
            out.update(read_fields(doc[key], kind, f"{at}{key}."))
        else:
            out[at + key] = _value(at + key, kind, doc[key])
    return out


def load_bundle(data: bytes, limit: int = MAX_BUNDLE) -> Any:
    """A bundle file's JSON document, shape unchecked (verify_bundle checks it);
    BundleFormatError when it is too large (above `limit`), not UTF-8 JSON or nested too
    deep."""
    if len(data) > limit:
        raise BundleFormatError(f"{len(data)} bytes, more than a bundle has ({limit})")
    try:
        return json.loads(data)
    except RecursionError:
        raise BundleFormatError("not JSON a bundle can be: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BundleFormatError(f"not JSON: {e}") from None


def _check(name: str, ok: bool, detail: str) -> None:
    if not ok:
        raise BundleError(name, detail)


def _parsed(name: str, raw: bytes) -> P.Message:
    """The message's envelope (who signed it), or the failure of check `name`."""
    try:
        return P.parse(raw, schema=False)
    except P.ProtocolError as e:
        raise BundleError(name, f"{e.reason}: {e}") from None


def _signed(name: str, raw: bytes, key: P.PublicKey, type_: int) -> P.Fields:
    try:
        m = P.verify(raw, key)
    except P.ProtocolError as e:
        raise BundleError(name, f"{e.reason}: {e}") from None
    _check(name, m.type == type_, f"message type {m.type}, expected {type_}")
    return m.fields


def _proof(name: str, run: Callable[[], None]) -> None:
    try:
        run()
    except merkle.MerkleError as e:
        raise BundleError(name, str(e)) from None


def bundle_version(doc: Any) -> int:
    """1 (the embedded chain's: a sealer) or 2 (a consortium's); BundleFormatError else."""
    if not isinstance(doc, dict) or doc.get("version").__class__ is not int or \
            doc["version"] not in (BUNDLE_VERSION, consortium.VERSION):
        raise BundleFormatError(f"not a version-{BUNDLE_VERSION} (embedded chain) or "
                                f"version-{consortium.VERSION} (consortium) bundle")
    return int(doc["version"])


# long: every check of a bundle in the order they are reported
def verify_bundle(doc: Any, trusted: list[P.PublicKey],
                  genesis: consortium.Genesis | None = None) -> Verified:
    """Every check of CHECKS in order; raises BundleError naming the first that fails. A
    version-2 bundle needs `genesis` (the consortium's), a version-1 one `trusted` keys."""
    version = bundle_version(doc)
    if version == consortium.VERSION and genesis is None:
        raise BundleFormatError("a consortium's bundle (version 2) is checked against the "
                                "network's genesis.json: give --validators")
    if version == BUNDLE_VERSION and not trusted:
        raise BundleFormatError("an embedded chain's bundle (version 1) is checked against "
                                "the dispatch key: give --trust")
    v = read_fields(doc, SHAPE if version == BUNDLE_VERSION else SHAPE_CONSORTIUM)
    reading, dev_pub_raw = v["reading"], v["device_pub"]
    enr_raw, enr_index = v["enrollment.entry"], v["enrollment.leaf_index"]
    enr_path = v["enrollment.inclusion_path"]
    leaf_index, tree_size, path = v["leaf_index"], v["tree_size"], v["inclusion_path"]
    cp_raw, fog_pub_raw = v["checkpoint"], v["fog_pub"]
    block_height, tx_raw = v["anchor.block_height"], v["anchor.transaction"]
    try:
        dev_pub, fog_pub = P.PublicKey(dev_pub_raw), P.PublicKey(fog_pub_raw)
    except P.ProtocolError as e:
        raise BundleFormatError(f"a public key is not a P-256 point: {e}") from None

    kid = _parsed("reading_signature", reading).kid
    _check("device_id", kid == dev_pub.id,
           f"reading is from meter {kid.hex()}, device_pub is meter {dev_pub.id_hex}")
    rf = _signed("reading_signature", reading, dev_pub, P.READING)
    cp_kid = _parsed("checkpoint_signature", cp_raw).kid
    _check("fog_id", cp_kid == fog_pub.id,
           f"checkpoint is signed by {cp_kid.hex()}, fog_pub is {fog_pub.id_hex}")
    ef = _signed("enrollment", enr_raw, fog_pub, P.ENROLLMENT)
    _check("enrollment", ef[1] == dev_pub.id and ef[10] == dev_pub.raw,
           "the decision names another meter or key")
    _check("enrollment", ef[18] == "active", f"the decision says {ef[18]!r}, not 'active'")
    _check("enrollment_order", enr_index < leaf_index,
           f"enrollment is entry {enr_index}, the reading entry {leaf_index}")
    cf = _signed("checkpoint_signature", cp_raw, fog_pub, P.CHECKPOINT)
    _check("tree_size", cf[3] == tree_size,
           f"checkpoint size is {cf[3]}, bundle says {tree_size}")
    _proof("reading_inclusion", lambda: merkle.verify_inclusion(
        merkle.leaf_hash(reading), leaf_index, tree_size, path, cf[4]))
    _proof("enrollment_inclusion", lambda: merkle.verify_inclusion(
        merkle.leaf_hash(enr_raw), enr_index, tree_size, enr_path, cf[4]))
    tf = _signed("anchor_signature", tx_raw, fog_pub, C.TX)
    _check("anchor_signature", tf[3] == C.ANCHOR, f"transaction kind is {tf[3]!r}")
    _check("anchor_head", tf[4][1][-1] == cp_raw,
           "the checkpoint is not the newest one the anchor carries")
    done = (dev_pub.id_hex, rf[2], rf[3], rf[5], rf[6], leaf_index, tree_size, fog_pub.id_hex,
            cf[2], block_height)
    if genesis is not None and version == consortium.VERSION:
        c = consortium.verify_anchor(v, tf[6], genesis, BundleError)
        return Verified(*done, c.signers, "cometbft")
    hf, sealer = verify_header(v, "anchor.", trusted)
    verify_in_block(v, "anchor.", tx_raw, tf[6], hf)
    return Verified(*done, sealer)


def verify_header(v: dict[str, Any], at: str, trusted: list[P.PublicKey]) -> tuple[P.Fields, str]:
    """Checks block_signature and block_height of an embedded chain's anchor section (its
    read_fields under `at`): the header's fields and the sealer's id."""
    header_raw, sealer_sig = v[at + "block_header"], v[at + "sealer_signature"]
    hm = _parsed("block_signature", header_raw)
    key = next((k for k in trusted if k.id == hm.kid), None)
    _check("block_signature", key is not None,
           f"block sealed by {hm.kid.hex()}, which is not a trusted key")
    assert key is not None
    hf = _signed("block_signature", header_raw, key, C.BLOCK)
    _check("block_signature", sealer_sig == hm.signature,
           "sealer_signature is not the header's signature")
    _check("block_height", hf[2] == v[at + "block_height"],
           f"header is block {hf[2]}, bundle says {v[at + 'block_height']}")
    return hf, hm.kid.hex()


def verify_in_block(v: dict[str, Any], at: str, tx_raw: bytes, tx_chain: bytes,
                    hf: P.Fields) -> None:
    """Checks chain_id and tx_inclusion: transaction `tx_raw` (naming chain `tx_chain`) is
    the section's tx_index of the block whose header fields are `hf`."""
    tx_index, tx_path = v[at + "tx_index"], v[at + "tx_path"]
    _check("chain_id", tx_chain == hf[7], "the transaction names another chain than the block")
    _check("tx_inclusion", tx_index < hf[5], f"tx_index {tx_index} but the block holds {hf[5]}")
    _proof("tx_inclusion", lambda: merkle.verify_inclusion(
        merkle.leaf_hash(tx_raw), tx_index, hf[5], tx_path, hf[4]))


# --- CLI ---------------------------------------------------------------------------------------
def _utc(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _line(text: str) -> str:
    return " ".join(text.split())


def _token_flags(p: argparse.ArgumentParser) -> None:
    """--token / --token-file (the fog's auditor token) and --ca-file (TLS)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--token-file", type=Path, metavar="FILE",
                   help="file holding the fog's auditor token (its data dir's auditor.token): "
                        "readings' proofs and the device list need it")
    g.add_argument("--token", metavar="TOKEN",
                   help="the fog's auditor token itself (visible to other local users in the "
                        "process list: prefer --token-file)")
    p.add_argument("--ca-file", type=Path, metavar="FILE",
                   help="CA certificate (PEM) the services' https certificates must chain to "
                        "(default: the system's CAs)")


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The token of --token or --token-file (None: neither given)."""
    if token_file is not None:
        return datadir.read_secret(token_file, "token")
    if token is not None and not token.strip():
        raise errors.ConfigError("--token is empty")
    return token.strip() if token is not None else None


def _bundle(args: argparse.Namespace) -> int:
    """`bundle`: fetch, write, say where; exit 1 if a service refused, 2 on bad input."""
    try:
        dev = bytes.fromhex(args.dev)
        if len(dev) != 8:
            raise ValueError
    except ValueError:
        print("error: --dev must be 16 hex characters", file=sys.stderr)
        return 2
    return fetch(args, lambda fog, chain: build_bundle(fog, chain, dev, args.seq),
                 f"bundle for {args.dev} seq {args.seq}")


def fetch(args: argparse.Namespace, build: Callable[[FogClient, ChainClient], Any],
          what: str) -> int:
    """Build a document from the services of --fog and --chain (with the token flags) and
    write it to --output, saying `what` was written: 0, 1 if a service refused, 2 on bad
    input."""
    try:
        token = read_token(args.token, args.token_file)
        fog = FogClient(args.fog, token=token, ca_file=args.ca_file)
        chain = ChainClient(args.chain, ca_file=args.ca_file)
    except errors.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        doc = build(fog, chain)
    except ChainClientError as e:
        hint = " (the fog's auditor token: --token-file)" if " 401" in str(e) else ""
        print(f"error: {_line(str(e))}{hint}", file=sys.stderr)
        return 1
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{what} written to {args.output}")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m tools.audit") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="fetch the proof bundle of one reading")
    b.add_argument("--fog", required=True, help="the fog node's API base URL")
    b.add_argument("--chain", required=True, help="the dispatch chain's API base URL")
    b.add_argument("--dev", required=True, help="meter id, 16 hex characters")
    b.add_argument("--seq", required=True, type=int, help="the reading's seq (>= 1)")
    b.add_argument("-o", "--output", required=True, type=Path, help="the bundle file to write")
    _token_flags(b)
    v = sub.add_parser("verify", help="check a proof bundle offline")
    v.add_argument("file", type=Path, help="the bundle (JSON) that `bundle` wrote")
    v.add_argument("--trust", action="append", default=[],
                   help="a trusted dispatch-chain public key (hex, 65 bytes); repeatable; "
                        "for an embedded chain's bundle")
    v.add_argument("--validators", type=Path, metavar="GENESIS.json",
                   help="the consortium's genesis.json (its validator set and chain): for a "
                        "consortium's bundle")
    v.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: one line; json: the verdict as an object for scripts "
                        "(default: text)")
    d = sub.add_parser("decode", help="show every message of a proof bundle by name")
    d.add_argument("file", type=Path, help="the bundle (JSON) that `bundle` wrote")
    d.add_argument("--format", choices=("json", "text"), default="text",
                   help="text for people, json for scripts (default: text)")
    from tools import audit_bill, audit_certificate, audit_trade

    audit_certificate.add_parsers(sub)
    audit_trade.add_parsers(sub)
    audit_bill.add_parsers(sub)
    args = ap.parse_args(argv)
    if args.cmd in audit_certificate.COMMANDS:
        return audit_certificate.run(args)
    if args.cmd in audit_trade.COMMANDS:
        return audit_trade.run(args)
    if args.cmd in audit_bill.COMMANDS:
        return audit_bill.run(args)
    if args.cmd == "bundle":
        return _bundle(args)
    if args.cmd == "decode":
        return _decode(args.file, args.format)
    if not args.trust and args.validators is None:
        ap.error("verify needs --trust (an embedded chain) or --validators (a consortium)")
    return _verify(args.file, args.trust, args.format, args.validators)


# the messages of a bundle, by their dotted path in it
BUNDLE_MESSAGES = ("reading", "enrollment.entry", "checkpoint", "anchor.transaction",
                   "anchor.block_header")


def decode_bundle(doc: Any) -> dict[str, Any]:
    """Every message of a bundle described (tools.reading.describe), by its path; the
    bundle's shape is checked (BundleFormatError), its signatures and proofs are not."""
    from tools.reading import describe

    consortium_bundle = isinstance(doc, dict) and doc.get("version") == consortium.VERSION
    v = read_fields(doc, SHAPE_CONSORTIUM if consortium_bundle else SHAPE)
    out: dict[str, Any] = {}
    for path in BUNDLE_MESSAGES:
        if path not in v:  # a consortium's block header is CometBFT's JSON, shown as is
            continue
        try:
            out[path] = describe(P.parse(v[path], schema=False))
        except P.ProtocolError as e:
            raise BundleFormatError(f"{path} is no message: {e.reason}: {e}") from None
    return out


def _decode(file: Path, fmt: str) -> int:
    from tools.reading import render_text

    try:
        with file.open("rb") as f:
            decoded = decode_bundle(load_bundle(f.read(MAX_BUNDLE + 1)))
    except OSError as e:
        print(f"error: {_line(str(e))}", file=sys.stderr)
        return 2
    except BundleFormatError as e:
        print(f"error: {file}: {_line(e.detail)}", file=sys.stderr)
        return 2
    if fmt == "json":
        print(json.dumps(decoded, indent=1))
    else:
        print("\n\n".join(f"{path}:\n{render_text(d, '  ')}" for path, d in decoded.items()))
    return 0


def trusted_keys(trust: list[str]) -> list[P.PublicKey] | None:
    """The keys of --trust, or None after saying why not (exit 2)."""
    try:
        return [P.PublicKey(bytes.fromhex(t.strip())) for t in trust]
    except (ValueError, P.ProtocolError) as e:
        print(f"error: --trust: {e}", file=sys.stderr)
        return None


def verdict(file: Path, fmt: str, verify: Callable[[Any], R], limit: int = MAX_BUNDLE) -> R | int:
    """`verify` of the file's JSON document, or the exit status after saying why not: 1
    naming the failed check (as JSON for --format json), 2 for input that is no bundle."""
    try:
        with file.open("rb") as f:
            return verify(load_bundle(f.read(limit + 1), limit))
    except OSError as e:
        print(f"error: {_line(str(e))}", file=sys.stderr)
        return 2
    except BundleFormatError as e:  # malformed input: a usage error, not a verdict
        print(f"error: {file}: {_line(e.detail)}", file=sys.stderr)
        return 2
    except BundleError as e:
        if fmt == "json":
            print(json.dumps({"verified": False, "check": e.check, "detail": _line(e.detail)}))
        else:
            print(f"rejected: {_line(str(e))}")
        return 1


def _verify(file: Path, trust: list[str], fmt: str = "text",
            validators: Path | None = None) -> int:
    """`verify`: 0 verified, 1 rejected naming the check, 2 input that is no bundle."""
    trusted = trusted_keys(trust)
    if trusted is None:
        return 2
    try:
        genesis = consortium.load_genesis(validators) if validators is not None else None
    except consortium.GenesisError as e:
        print(f"error: {_line(str(e))}", file=sys.stderr)
        return 2
    r = verdict(file, fmt, lambda doc: verify_bundle(doc, trusted, genesis))
    if isinstance(r, int):
        return r
    if fmt == "json":
        print(json.dumps({"verified": True, **dataclasses.asdict(r), "t_utc": _utc(r.t),
                          "checks": [name for name, _ in checks_of(r)]}))
        return 0
    print(f"verified: meter {r.dev} seq {r.seq} (t {r.t}, import {r.imp} Wh, export "
          f"{r.exp} Wh) is entry {r.leaf_index} of fog {r.fog}'s log (size {r.tree_size}, "
          f"checkpoint {r.checkpoint_height}), anchored in block {r.block_height} "
          f"{'sealed by' if r.engine == 'embedded' else 'committed by'} {r.sealer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
