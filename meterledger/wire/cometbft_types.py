"""CometBFT v0.38 blocks, commits and validators as frozen dataclasses, parsed strictly from
the JSON CometBFT's own RPC returns, so a proof bundle can carry those answers verbatim.

Accepted inputs (each parser also takes the inner object alone):
- `GET /commit?height=H` -> its `signed_header` {header, commit};
- `genesis.json` or `GET /validators?height=H` -> `validators`, whose entries have `power`
  (genesis) or `voting_power` (RPC); a paginated RPC answer must hold the whole set;
- `GET /block?height=H` -> `block.data.txs` (base64);
- `GET /tx?hash=0x..&prove=true` -> `proof` {root_hash, data, proof {total, index,
  leaf_hash, aunts}}.

Encodings are CometBFT's: int64 as a decimal string, int32/uint32 as a JSON number, hashes
and addresses as hex (CometBFT writes upper case; either case is read), keys, signatures
and transactions as padded base64, times as RFC 3339 with up to nine fractional digits,
read exactly to (seconds, nanos) with no float. A wrong shape raises ProtocolError with
`bad_header`, `bad_commit`, `bad_validators`, `bad_block` or `bad_tx_proof`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from meterledger.errors import ProtocolError

__all__ = [
    "ADDRESS_SIZE", "ED25519_KEY_TYPE", "FLAG_ABSENT", "FLAG_COMMIT", "FLAG_NIL",
    "MAX_TOTAL_VOTING_POWER", "ZERO_TIME", "BlockID", "Commit", "CommitSig", "Header", "SignedHeader",
    "Time", "TxProof", "Validator", "ValidatorSet", "parse_block_txs", "parse_signed_header",
    "parse_time", "parse_tx_proof", "parse_validators",
]

FLAG_ABSENT, FLAG_COMMIT, FLAG_NIL = 1, 2, 3
"""types.BlockIDFlag: no vote received; voted for the commit's block; voted for nil."""
ADDRESS_SIZE = 20
HASH_SIZE = 32
ED25519_KEY_TYPE = "tendermint/PubKeyEd25519"
MAX_TOTAL_VOTING_POWER = (2**63 - 1) // 8
MAX_CHAIN_ID_LEN = 50
MAX_AUNTS = 100
_INT64 = (-(2**63), 2**63 - 1)
_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
                      r"(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})")
_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()
T = TypeVar("T")


class _Shape(ValueError):
    """A JSON value of the wrong shape; the public parsers turn it into a ProtocolError."""


@dataclass(frozen=True)
class Time:
    """A google.protobuf.Timestamp: seconds since the Unix epoch (UTC) and 0 <= nanos < 1e9."""

    seconds: int
    nanos: int


@dataclass(frozen=True)
class BlockID:
    """A block's id: its header hash and the part set header of its serialised parts."""

    hash: bytes
    parts_total: int
    parts_hash: bytes

    @property
    def is_zero(self) -> bool:
        return not self.hash and not self.parts_total and not self.parts_hash


@dataclass(frozen=True)
class Header:
    """types.Header: the 14 fields Header.Hash commits to, in their proto order."""

    version_block: int
    version_app: int
    chain_id: str
    height: int
    time: Time
    last_block_id: BlockID
    last_commit_hash: bytes
    data_hash: bytes
    validators_hash: bytes
    next_validators_hash: bytes
    consensus_hash: bytes
    app_hash: bytes
    last_results_hash: bytes
    evidence_hash: bytes
    proposer_address: bytes


@dataclass(frozen=True)
class CommitSig:
    """One validator's precommit in a commit; empty address and signature when absent."""

    flag: int
    validator_address: bytes
    timestamp: Time
    signature: bytes


@dataclass(frozen=True)
class Commit:
    height: int
    round: int
    block_id: BlockID
    signatures: tuple[CommitSig, ...]


@dataclass(frozen=True)
class SignedHeader:
    header: Header
    commit: Commit


@dataclass(frozen=True)
class Validator:
    """An ed25519 validator: address = SHA-256(pub_key)[:20]."""

    address: bytes
    pub_key: bytes
    power: int


@dataclass(frozen=True)
class ValidatorSet:
    """Validators in CometBFT's set order: voting power descending, then address ascending.
    Commit signature i belongs to validator i of this order."""

    validators: tuple[Validator, ...]

    @property
    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    def by_address(self) -> dict[bytes, int]:
        return {v.address: i for i, v in enumerate(self.validators)}


@dataclass(frozen=True)
class TxProof:
    """crypto/merkle.Proof of one transaction in a block's data hash: leaf_hash =
    SHA-256(0x00 || SHA-256(tx)), aunts from the leaf's sibling up to the root's child."""

    total: int
    index: int
    leaf_hash: bytes
    aunts: tuple[bytes, ...]


# --- JSON field readers (raise _Shape) ----------------------------------------------------------
def _check(value: Any, kind: type[T], what: str) -> T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Shape(f"{what} is {type(value).__name__}, not {kind.__name__}")
    return value


def _get(obj: Any, key: str, kind: type[T]) -> T:
    if not isinstance(obj, dict):
        raise _Shape(f"expected an object holding {key!r}, got {type(obj).__name__}")
    if key not in obj:
        raise _Shape(f"{key!r} is missing")
    return _check(obj[key], kind, repr(key))


def _int64(obj: Any, key: str, lo: int = _INT64[0], hi: int = _INT64[1]) -> int:
    """An int64 as CometBFT writes it: a decimal string, no sign but '-', no leading zero."""
    s = _get(obj, key, str)
    if not re.fullmatch(r"-?(0|[1-9][0-9]*)", s) or not lo <= int(s) <= hi:
        raise _Shape(f"{key!r} is {s[:24]!r}, not a decimal integer in [{lo}, {hi}]")
    return int(s)


def _number(obj: Any, key: str, lo: int, hi: int) -> int:
    """An int32/uint32 as CometBFT writes it: a JSON number."""
    n = _get(obj, key, int)
    if not lo <= n <= hi:
        raise _Shape(f"{key!r} is {n}, outside [{lo}, {hi}]")
    return n


def _hex(obj: Any, key: str, sizes: tuple[int, ...] = ()) -> bytes:
    s = _get(obj, key, str)
    if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})*", s):
        raise _Shape(f"{key!r} is not hex")
    b = bytes.fromhex(s)
    if sizes and len(b) not in sizes:
        raise _Shape(f"{key!r} is {len(b)} bytes, not {' or '.join(map(str, sizes))}")
    return b


def _b64(obj: Any, key: str) -> bytes:
    return _b64_text(_get(obj, key, str), repr(key))


def _b64_text(value: Any, what: str) -> bytes:
    """Standard padded base64, in its one canonical spelling (as Go writes it)."""
    s = _check(value, str, what)
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = None
    if raw is None or base64.b64encode(raw).decode() != s:
        raise _Shape(f"{what} is not canonical padded base64")
    return raw


def parse_time(s: str) -> Time:
    """RFC 3339 (Go's RFC3339Nano as CometBFT writes times) to exact (seconds, nanos).
    An offset other than Z is applied. Raises ValueError."""
    m = _RFC3339.fullmatch(s) if isinstance(s, str) else None
    if m is None:
        raise _Shape(f"time {str(s)[:40]!r} is not RFC 3339")
    y, mo, d, h, mi, sec = (int(g) for g in m.groups()[:6])
    if h > 23 or mi > 59 or sec > 59:
        raise _Shape(f"time {s!r} has no such time of day")
    try:
        day = datetime.date(y, mo, d).toordinal() - _EPOCH_DAY
    except ValueError:
        raise _Shape(f"time {s!r} has no such date") from None
    zone = m.group(8)
    offset = 0 if zone == "Z" else (int(zone[1:3]) * 60 + int(zone[4:6])) * 60
    if zone[0] == "-":
        offset = -offset
    nanos = int((m.group(7) or "").ljust(9, "0"))
    return Time(day * 86400 + h * 3600 + mi * 60 + sec - offset, nanos)


ZERO_TIME = parse_time("0001-01-01T00:00:00Z")
"""Go's zero time.Time: the timestamp of an absent signature."""


def _time(obj: Any, key: str) -> Time:
    return parse_time(_get(obj, key, str))


def _block_id(obj: Any) -> BlockID:
    parts = _get(obj, "parts", dict)
    return BlockID(_hex(obj, "hash", (0, HASH_SIZE)), _number(parts, "total", 0, 2**32 - 1),
                   _hex(parts, "hash", (0, HASH_SIZE)))


def _parse(reason: str, what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except _Shape as e:
        raise ProtocolError(reason, f"{what}: {e}") from None


# --- the public parsers ---------------------------------------------------------------------------
def _header(h: Any) -> Header:
    version = _get(h, "version", dict)
    chain_id = _get(h, "chain_id", str)
    if not 0 < len(chain_id) <= MAX_CHAIN_ID_LEN:
        raise _Shape(f"chain_id is {len(chain_id)} characters, not 1 to {MAX_CHAIN_ID_LEN}")
    hashes = {k: _hex(h, k, (0, HASH_SIZE)) for k in (
        "last_commit_hash", "data_hash", "next_validators_hash", "consensus_hash",
        "last_results_hash", "evidence_hash")}
    return Header(
        _int64(version, "block", 0), _int64(version, "app", 0), chain_id,
        _int64(h, "height", 1), _time(h, "time"), _block_id(_get(h, "last_block_id", dict)),
        hashes["last_commit_hash"], hashes["data_hash"],
        _hex(h, "validators_hash", (HASH_SIZE,)), hashes["next_validators_hash"],
        hashes["consensus_hash"], _hex(h, "app_hash"), hashes["last_results_hash"],
        hashes["evidence_hash"], _hex(h, "proposer_address", (ADDRESS_SIZE,)))


def _commit_sig(i: int, s: Any) -> CommitSig:
    flag = _number(s, "block_id_flag", 0, 255)
    sig = CommitSig(flag, _hex(s, "validator_address"), _time(s, "timestamp"),
                    _b64(s, "signature") if s.get("signature") is not None else b"")
    if flag == FLAG_ABSENT:
        if sig.validator_address or sig.signature or sig.timestamp != ZERO_TIME:
            raise _Shape(f"signature {i} is absent yet carries an address, time or signature")
    elif flag in (FLAG_COMMIT, FLAG_NIL):
        if len(sig.validator_address) != ADDRESS_SIZE or not sig.signature:
            raise _Shape(f"signature {i} has no {ADDRESS_SIZE}-byte address or no signature")
    else:
        raise _Shape(f"signature {i} has unknown block_id_flag {flag}")
    return sig


def _commit(c: Any) -> Commit:
    block_id = _block_id(_get(c, "block_id", dict))
    if len(block_id.hash) != HASH_SIZE:
        raise _Shape("block_id.hash is not a 32-byte hash: a commit is for a block")
    sigs = _get(c, "signatures", list)
    return Commit(_int64(c, "height", 1), _number(c, "round", 0, 2**31 - 1), block_id,
                  tuple(_commit_sig(i, s) for i, s in enumerate(sigs)))


def parse_signed_header(obj: Any) -> SignedHeader:
    """The `signed_header` of a /commit answer (or that answer's `result`)."""
    if isinstance(obj, dict) and "signed_header" in obj:
        obj = obj["signed_header"]
    header = _parse("bad_header", "header", lambda: _header(_get(obj, "header", dict)))
    commit = _parse("bad_commit", "commit", lambda: _commit(_get(obj, "commit", dict)))
    return SignedHeader(header, commit)


def _validator(i: int, v: Any) -> Validator:
    key = _get(v, "pub_key", dict)
    if _get(key, "type", str) != ED25519_KEY_TYPE:
        raise _Shape(f"validator {i} key is {key['type'][:40]!r}, only {ED25519_KEY_TYPE}")
    pub = _b64(key, "value")
    if len(pub) != 32:
        raise _Shape(f"validator {i} ed25519 key is {len(pub)} bytes, not 32")
    power = _int64(v, "power" if "power" in v else "voting_power", 1, MAX_TOTAL_VOTING_POWER)
    address = hashlib.sha256(pub).digest()[:ADDRESS_SIZE]
    if v.get("address", "") and _hex(v, "address") != address:
        raise _Shape(f"validator {i} address is not SHA-256(pub_key)[:20] = {address.hex()}")
    return Validator(address, pub, power)


def _validator_set(obj: Any) -> ValidatorSet:
    entries = obj if isinstance(obj, list) else _get(obj, "validators", list)
    if isinstance(obj, dict) and "total" in obj and _int64(obj, "total") != len(entries):
        raise _Shape(f"a page of {len(entries)} of {obj['total']} validators, not the set")
    vals = [_validator(i, v) for i, v in enumerate(entries)]
    if not vals:
        raise _Shape("the validator set is empty")
    if len({v.address for v in vals}) != len(vals):
        raise _Shape("a validator is listed twice")
    if sum(v.power for v in vals) > MAX_TOTAL_VOTING_POWER:
        raise _Shape(f"total voting power is above {MAX_TOTAL_VOTING_POWER}")
    return ValidatorSet(tuple(sorted(vals, key=lambda v: (-v.power, v.address))))


def parse_validators(obj: Any) -> ValidatorSet:
    """The validators of a genesis.json, of a /validators answer, or a list of entries."""
    return _parse("bad_validators", "validators", lambda: _validator_set(obj))


def _block_txs(obj: Any) -> tuple[bytes, ...]:
    if isinstance(obj, dict) and "block" in obj:
        obj = obj["block"]
    txs = _get(_get(obj, "data", dict), "txs", list)
    return tuple(_b64_text(t, f"tx {i}") for i, t in enumerate(txs))


def parse_block_txs(obj: Any) -> tuple[bytes, ...]:
    """The transactions of a /block answer (or of its `block`), in block order."""
    return _parse("bad_block", "block", lambda: _block_txs(obj))


def _tx_proof(obj: Any) -> tuple[bytes, TxProof]:
    if isinstance(obj, dict) and "proof" in obj and "root_hash" not in obj:
        obj = obj["proof"]
    inner = _get(obj, "proof", dict)
    aunts = _get(inner, "aunts", list) if inner.get("aunts") is not None else []
    if len(aunts) > MAX_AUNTS:
        raise _Shape(f"{len(aunts)} aunts, more than {MAX_AUNTS}")
    decoded = tuple(_b64_text(a, f"aunt {i}") for i, a in enumerate(aunts))
    if any(len(a) != HASH_SIZE for a in decoded):
        raise _Shape("an aunt is not a 32-byte hash")
    leaf = _b64(inner, "leaf_hash")
    if len(leaf) != HASH_SIZE:
        raise _Shape("leaf_hash is not a 32-byte hash")
    proof = TxProof(_int64(inner, "total", 1), _int64(inner, "index", 0), leaf, decoded)
    return _b64(obj, "data"), proof


def parse_tx_proof(obj: Any) -> tuple[bytes, TxProof]:
    """(tx, proof) from a /tx?prove=true answer (or its `proof`). Its root_hash is not
    read: the proof is checked against the data hash of a verified header instead."""
    return _parse("bad_tx_proof", "tx proof", lambda: _tx_proof(obj))
