"""The few protobuf encodings CometBFT v0.38 hashes and signs, written out by hand.

A verifier of CometBFT blocks (`meterledger.wire.cometbft`) must need nothing but
`cryptography`, so instead of a protobuf library this module encodes the handful of proto3
messages involved, byte for byte as gogoproto's generated Marshal does:

- a field is a key varint(field_number << 3 | wire_type) then its value; wire type 0 is a
  varint, 1 eight little-endian bytes (sfixed64), 2 varint(length) then the bytes;
- a proto3 scalar at its default (0, "", b"") is left out, as are unset message pointers;
  a non-nullable embedded message (gogoproto.nullable = false) is always written, even
  empty, and fields are written in field-number order;
- a negative int64 is a varint of its 64-bit two's complement (10 bytes).

The messages: tendermint.version.Consensus, google.protobuf.Timestamp, tendermint.types
BlockID / PartSetHeader (and their Canonical twins, which encode the same), CanonicalVote
(length-delimited, libs/protoio.MarshalDelimited, as types.VoteSignBytes signs it),
SimpleValidator with its tendermint.crypto.PublicKey, and the gogoproto wrappers
(StringValue, Int64Value, BytesValue) that types/encoding_helper.go's cdcEncode puts
around the scalar header fields. Every function here takes plain values and returns bytes.
"""

from __future__ import annotations

import struct

__all__ = [
    "PRECOMMIT", "block_id", "canonical_vote", "cdc_bytes", "cdc_int64", "cdc_string",
    "consensus_version", "delimited", "field_bytes", "field_sfixed64", "field_varint",
    "simple_validator", "timestamp", "varint",
]

PRECOMMIT = 2
"""tendermint.types.SignedMsgType PRECOMMIT_TYPE: what a commit's signatures are."""

_U64 = 1 << 64
_VARINT, _FIXED64, _LEN = 0, 1, 2


def varint(n: int) -> bytes:
    """Base-128 varint, low 7 bits first; a negative n (an int64) as its two's complement."""
    if not -(1 << 63) <= n < _U64:
        raise OverflowError(f"{n} fits neither int64 nor uint64")
    n %= _U64
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def field_varint(field: int, n: int) -> bytes:
    """An int64/uint64/uint32/enum field; empty at its default 0."""
    return _key(field, _VARINT) + varint(n) if n else b""


def field_sfixed64(field: int, n: int) -> bytes:
    """An sfixed64 field (eight little-endian bytes); empty at its default 0."""
    return _key(field, _FIXED64) + struct.pack("<q", n) if n else b""


def field_bytes(field: int, value: bytes, always: bool = False) -> bytes:
    """A bytes, string or embedded-message field; empty at b"" unless `always` (a
    non-nullable embedded message, which gogoproto writes even when it is empty)."""
    if not value and not always:
        return b""
    return _key(field, _LEN) + varint(len(value)) + value


def delimited(message: bytes) -> bytes:
    """libs/protoio.MarshalDelimited: varint(length) then the message."""
    return varint(len(message)) + message


def timestamp(seconds: int, nanos: int) -> bytes:
    """google.protobuf.Timestamp {int64 seconds = 1; int32 nanos = 2} (gogoproto StdTime)."""
    return field_varint(1, seconds) + field_varint(2, nanos)


def consensus_version(block: int, app: int) -> bytes:
    """tendermint.version.Consensus {uint64 block = 1; uint64 app = 2}."""
    return field_varint(1, block) + field_varint(2, app)


def block_id(hash_: bytes, parts_total: int, parts_hash: bytes) -> bytes:
    """BlockID {bytes hash = 1; PartSetHeader part_set_header = 2 (non-nullable)} with
    PartSetHeader {uint32 total = 1; bytes hash = 2}. CanonicalBlockID and
    CanonicalPartSetHeader have the same fields, so the same bytes."""
    parts = field_varint(1, parts_total) + field_bytes(2, parts_hash)
    return field_bytes(1, hash_) + field_bytes(2, parts, always=True)


def canonical_vote(height: int, round_: int, canonical_block_id: bytes | None,
                   seconds: int, nanos: int, chain_id: str) -> bytes:
    """CanonicalVote {SignedMsgType type = 1; sfixed64 height = 2; sfixed64 round = 3;
    CanonicalBlockID block_id = 4 (nullable: None for a vote for nil); Timestamp timestamp
    = 5 (non-nullable); string chain_id = 6}, for a precommit, not yet delimited."""
    return (field_varint(1, PRECOMMIT) + field_sfixed64(2, height) + field_sfixed64(3, round_)
            + (b"" if canonical_block_id is None
               else field_bytes(4, canonical_block_id, always=True))
            + field_bytes(5, timestamp(seconds, nanos), always=True)
            + field_bytes(6, chain_id.encode()))


def simple_validator(ed25519_key: bytes, power: int) -> bytes:
    """SimpleValidator {tendermint.crypto.PublicKey pub_key = 1; int64 voting_power = 2},
    the PublicKey being the oneof {bytes ed25519 = 1}: what ValidatorSet.Hash hashes."""
    return field_bytes(1, field_bytes(1, ed25519_key, always=True), always=True) + \
        field_varint(2, power)


def cdc_string(s: str) -> bytes:
    """cdcEncode(string): gogotypes.StringValue {string value = 1}; b"" for ""."""
    return field_bytes(1, s.encode())


def cdc_int64(n: int) -> bytes:
    """cdcEncode(int64): gogotypes.Int64Value {int64 value = 1}; b"" for 0."""
    return field_varint(1, n)


def cdc_bytes(b: bytes) -> bytes:
    """cdcEncode(HexBytes): gogotypes.BytesValue {bytes value = 1}; b"" for empty bytes."""
    return field_bytes(1, b)
