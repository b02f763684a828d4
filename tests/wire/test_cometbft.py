"""meterledger.wire.cometbft against real CometBFT v0.38.26 output.

The vectors (tests/wire/vectors/cometbft/, written by tools/cometbft_vectors.py) are the
JSON-RPC answers of real nodes: a single validator and a four-validator network running
kvstore. Every expected hash and signature comes from them or from CometBFT's own test
suite; nothing expected is computed here by the code under test. Broken cases mutate the
real answers and must each be refused with their own reason code.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meterledger.errors import ProtocolError
from meterledger.wire import cometbft as C
from meterledger.wire import cometbft_proto as pb
from meterledger.wire import merkle
from meterledger.wire.cometbft_types import ZERO_TIME

VECTORS = Path(__file__).resolve().parent / "vectors" / "cometbft"
NETS = ("single", "four")


@cache
def _load(net: str, name: str) -> Any:
    return json.loads((VECTORS / net / name).read_text())


def load(net: str, name: str) -> Any:
    return copy.deepcopy(_load(net, name))


def index(net: str) -> dict[str, Any]:
    return load(net, "index.json")


def chain_id(net: str) -> str:
    return str(index(net)["chain_id"])


def validators(net: str) -> C.ValidatorSet:
    return C.parse_validators(load(net, "genesis.json"))


def tx_height(net: str) -> int:
    """The block with the most transactions (the burst of five)."""
    heights = list(index(net)["txs"].values())
    return max(set(heights), key=heights.count)


CASES = [(net, h) for net in NETS for h in index(net)["heights"]]
TX_CASES = [(net, h) for net in NETS for h in index(net)["txs"]]


def sigs(commit: dict[str, Any]) -> list[dict[str, Any]]:
    return commit["signed_header"]["commit"]["signatures"]


def absent() -> dict[str, Any]:
    return {"block_id_flag": 1, "validator_address": "", "timestamp": "0001-01-01T00:00:00Z",
            "signature": None}


def refused(reason: str, fn: Callable[[], object]) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        fn()
    assert e.value.reason == reason, repr(e.value)
    assert e.value.reason in C.REASONS
    return e.value


def verify(net: str, commit: dict[str, Any], vals: C.ValidatorSet | None = None,
           chain: str | None = None) -> C.VerifiedBlock:
    return C.verify_commit(chain or chain_id(net), C.parse_signed_header(commit),
                           vals or validators(net))


# --- RFC 8032 section 6 reference verifier: an ed25519 independent of OpenSSL -----------------
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_Q = 2**252 + 27742317777372353535851937790883648493


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    x = (a[1] - a[0]) * (b[1] - b[0]) % _P
    y = (a[1] + a[0]) * (b[1] + b[0]) % _P
    c, d = 2 * a[3] * b[3] * _D % _P, 2 * a[2] * b[2] % _P
    e, f, g, h = y - x, d - c, d + c, y + x
    return (e * f, g * h, f * g, e * h)


def _mul(s: int, p: tuple[int, ...]) -> tuple[int, ...]:
    q: tuple[int, ...] = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p, s = _add(p, p), s >> 1
    return q


def _x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    if x2 % _P == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


def _point(s: bytes) -> tuple[int, ...] | None:
    y = int.from_bytes(s, "little")
    x = _x(y & ((1 << 255) - 1), y >> 255)
    return None if x is None else (x, y & ((1 << 255) - 1), 1, x * (y & ((1 << 255) - 1)) % _P)


def rfc8032_verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    a, r = _point(pub), _point(sig[:32])
    s = int.from_bytes(sig[32:], "little")
    if a is None or r is None or s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(sig[:32] + pub + msg).digest(), "little") % _Q
    gy = 4 * pow(5, _P - 2, _P) % _P
    gx = _x(gy, 0)
    assert gx is not None
    sb, rha = _mul(s, (gx, gy, 1, gx * gy % _P)), _add(r, _mul(h, a))
    return (sb[0] * rha[2] - rha[0] * sb[2]) % _P == 0 and \
        (sb[1] * rha[2] - rha[1] * sb[2]) % _P == 0


# --- golden: what the real nodes produced ---------------------------------------------------------
@pytest.mark.parametrize(("net", "height"), CASES)
def test_header_hash_is_the_block_id(net: str, height: int) -> None:
    sh = C.parse_signed_header(load(net, f"commit_{height}.json"))
    block = load(net, f"block_{height}.json")
    assert C.header_hash(sh.header) == sh.commit.block_id.hash
    assert C.header_hash(sh.header).hex().upper() == block["block_id"]["hash"]
    if height > 1:
        prev = C.parse_signed_header(load(net, f"commit_{height - 1}.json"))
        assert sh.header.last_block_id == prev.commit.block_id


def test_header_hash_matches_cometbft_test_suite() -> None:
    """types/block_test.go TestHeaderHash's expected hash."""
    s = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    header = C.Header(
        1, 2, "chainId", 3, C.parse_time("2019-10-13T16:14:44Z"),
        C.BlockID(bytes(32), 6, bytes(32)), s(b"last_commit_hash"), s(b"data_hash"),
        s(b"validators_hash"), s(b"next_validators_hash"), s(b"consensus_hash"),
        s(b"app_hash"), s(b"last_results_hash"), s(b"evidence_hash"),
        s(b"proposer_address")[:20])
    assert C.header_hash(header).hex().upper() == \
        "F740121F553B5418C3EFBD343C2DBFE9E007BB67B0D020A0741374BAB65242A4"


def test_vote_sign_bytes_match_cometbft_test_suite() -> None:
    """types/vote_test.go TestVoteSignBytesTestVectors case 1 (a precommit, zero time)."""
    want = bytes([0x21, 0x8, 0x2, 0x11, 1, 0, 0, 0, 0, 0, 0, 0, 0x19, 1, 0, 0, 0, 0, 0, 0, 0,
                  0x2a, 0xb, 0x8, 0x80, 0x92, 0xb8, 0xc3, 0x98, 0xfe, 0xff, 0xff, 0xff, 0x1])
    assert C.vote_sign_bytes("", 1, 1, None, ZERO_TIME) == want
    assert C.vote_sign_bytes("", 1, 1, C.BlockID(b"", 0, b""), ZERO_TIME) == want
    # case 4 (chain id "test_chain_id", no type) with the precommit type field 08 02 added
    case4 = bytes([0x2e]) + want[3:] + b"\x32\x0dtest_chain_id"
    chain = C.vote_sign_bytes("test_chain_id", 1, 1, None, ZERO_TIME)
    assert chain == bytes([case4[0] + 2, 0x08, 0x02]) + case4[1:]


@pytest.mark.parametrize(("net", "height"), CASES)
def test_real_signatures_verify_over_vote_sign_bytes(net: str, height: int) -> None:
    sh = C.parse_signed_header(load(net, f"commit_{height}.json"))
    vals = validators(net).validators
    for i, sig in enumerate(sh.commit.signatures):
        assert sig.flag == C.FLAG_COMMIT and sig.validator_address == vals[i].address
        msg = C.vote_sign_bytes(chain_id(net), height, sh.commit.round, sh.commit.block_id,
                                sig.timestamp)
        assert rfc8032_verify(vals[i].pub_key, msg, sig.signature)
        assert not rfc8032_verify(vals[i].pub_key, msg + b"x", sig.signature)


@pytest.mark.parametrize(("net", "height"), CASES)
def test_verify_commit_accepts_the_real_commits(net: str, height: int) -> None:
    block = verify(net, load(net, f"commit_{height}.json"))
    n = len(validators(net).validators)
    assert (block.height, block.chain_id) == (height, chain_id(net))
    assert block.hash.hex().upper() == load(net, f"block_{height}.json")["block_id"]["hash"]
    assert len(block.signers) == n and block.signed_power == block.total_power


@pytest.mark.parametrize(("net", "height"), CASES)
def test_validators_hash_from_genesis_and_rpc(net: str, height: int) -> None:
    sh = C.parse_signed_header(load(net, f"commit_{height}.json"))
    genesis = load(net, "genesis.json")
    rpc = C.parse_validators(load(net, f"validators_{height}.json"))
    reordered = C.parse_validators(list(reversed(genesis["validators"])))
    assert C.validators_hash(validators(net)) == sh.header.validators_hash
    assert validators(net) == rpc == reordered


@pytest.mark.parametrize(("net", "height"), CASES)
def test_block_txs_hash_to_the_data_hash(net: str, height: int) -> None:
    txs = C.parse_block_txs(load(net, f"block_{height}.json"))
    sh = C.parse_signed_header(load(net, f"commit_{height}.json"))
    assert C.data_hash(txs) == sh.header.data_hash
    for i, tx in enumerate(txs):
        C.verify_tx_proof(tx, C.tx_proof(txs, i), sh.header.data_hash)


@pytest.mark.parametrize(("net", "tx_id"), TX_CASES)
def test_cometbft_tx_proofs_verify_and_equal_ours(net: str, tx_id: str) -> None:
    height = index(net)["txs"][tx_id]
    tx, proof = C.parse_tx_proof(load(net, f"tx_{tx_id}.json"))
    txs = C.parse_block_txs(load(net, f"block_{height}.json"))
    assert C.tx_hash(tx).hex().upper() == tx_id
    assert C.tx_proof(txs, proof.index) == proof
    block = C.verify_tx_in_block(chain_id(net), C.parse_signed_header(
        load(net, f"commit_{height}.json")), validators(net), tx, proof)
    assert block.height == height


# --- broken commits, each refused with its own reason ---------------------------------------------
def four_commit() -> dict[str, Any]:
    return load("four", f"commit_{tx_height('four')}.json")


def test_one_of_four_missing_still_passes_two_do_not() -> None:
    commit = four_commit()
    sigs(commit)[3] = absent()
    block = verify("four", commit)
    assert (block.signed_power, block.total_power, len(block.signers)) == (3, 4, 3)
    sigs(commit)[1] = absent()  # 2 of 4: not more than two thirds
    e = refused("commit_insufficient_power", lambda: verify("four", commit))
    assert "2 of 4" in str(e)


def test_single_validator_without_its_signature() -> None:
    commit = load("single", "commit_3.json")
    sigs(commit)[0] = absent()
    refused("commit_insufficient_power", lambda: verify("single", commit))


def test_signature_from_a_key_outside_the_set() -> None:
    commit = four_commit()
    sh = C.parse_signed_header(commit)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    msg = C.vote_sign_bytes(chain_id("four"), sh.commit.height, sh.commit.round,
                            sh.commit.block_id, sh.commit.signatures[2].timestamp)
    sigs(commit)[2]["validator_address"] = hashlib.sha256(pub).digest()[:20].hex().upper()
    sigs(commit)[2]["signature"] = base64.b64encode(key.sign(msg)).decode()
    refused("commit_unknown_signer", lambda: verify("four", commit))


@pytest.mark.parametrize("net", NETS)
def test_altered_signature(net: str) -> None:
    commit = load(net, "commit_3.json")
    raw = bytearray(base64.b64decode(sigs(commit)[0]["signature"]))
    raw[10] ^= 1
    sigs(commit)[0]["signature"] = base64.b64encode(raw).decode()
    refused("commit_bad_signature", lambda: verify(net, commit))


def test_one_bad_signature_fails_a_commit_that_has_enough_without_it() -> None:
    commit = four_commit()
    sigs(commit)[3]["timestamp"] = "2000-01-01T00:00:00Z"  # signed over another time
    refused("commit_bad_signature", lambda: verify("four", commit))


def test_a_precommit_relabelled_as_nil_does_not_verify() -> None:
    commit = four_commit()
    sigs(commit)[0]["block_id_flag"] = 3  # a nil vote signs no block id
    refused("commit_bad_signature", lambda: verify("four", commit))


def test_duplicate_misplaced_and_missing_slots() -> None:
    dup = four_commit()
    sigs(dup)[1] = sigs(dup)[0]
    refused("commit_duplicate_signer", lambda: verify("four", dup))
    swapped = four_commit()
    sigs(swapped)[0], sigs(swapped)[1] = sigs(swapped)[1], sigs(swapped)[0]
    refused("commit_signer_order", lambda: verify("four", swapped))
    short = four_commit()
    sigs(short).pop()
    refused("commit_wrong_size", lambda: verify("four", short))


def test_commit_for_another_block_or_height() -> None:
    other = four_commit()
    other["signed_header"]["commit"]["block_id"]["hash"] = "AB" * 32
    refused("commit_wrong_block", lambda: verify("four", other))
    taller = four_commit()
    taller["signed_header"]["commit"]["height"] = "99"
    refused("commit_wrong_block", lambda: verify("four", taller))
    # another block's commit under this header
    mixed = four_commit()
    mixed["signed_header"]["commit"] = load("four", "commit_2.json")["signed_header"]["commit"]
    refused("commit_wrong_block", lambda: verify("four", mixed))


def test_another_chain() -> None:
    refused("commit_wrong_chain", lambda: verify("four", four_commit(), chain="other-chain"))
    refused("commit_wrong_chain", lambda: verify("single", load("single", "commit_3.json"),
                                                 chain=chain_id("four")))
    renamed = four_commit()
    renamed["signed_header"]["header"]["chain_id"] = "other-chain"
    refused("commit_wrong_block", lambda: verify("four", renamed, chain="other-chain"))


def test_forged_data_hash() -> None:
    height = tx_height("four")
    forged = four_commit()
    header = forged["signed_header"]["header"]
    txs = C.parse_block_txs(load("four", f"block_{height}.json"))
    evil = (*txs[:-1], b"evil=1")
    header["data_hash"] = C.data_hash(evil).hex().upper()
    refused("commit_wrong_block", lambda: verify("four", forged))
    # point the commit at the forged header too: the signatures are for the real block
    forged["signed_header"]["commit"]["block_id"]["hash"] = \
        C.header_hash(C.parse_signed_header(forged).header).hex().upper()
    refused("commit_bad_signature", lambda: verify("four", forged))
    real = C.parse_signed_header(four_commit()).header.data_hash
    refused("tx_not_in_block", lambda: C.verify_tx_proof(b"evil=1", C.tx_proof(evil, 4), real))
    refused("tx_not_in_block", lambda: C.verify_tx_proof(
        txs[0], C.tx_proof(txs, 0), C.data_hash(evil)))


def test_forged_validators() -> None:
    genesis = load("four", "genesis.json")
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    genesis["validators"][0]["pub_key"]["value"] = base64.b64encode(key).decode()
    genesis["validators"][0]["address"] = ""
    refused("validators_mismatch",
            lambda: verify("four", four_commit(), C.parse_validators(genesis)))
    heavier = load("four", "genesis.json")
    heavier["validators"][0]["power"] = "100"
    refused("validators_mismatch",
            lambda: verify("four", four_commit(), C.parse_validators(heavier)))
    refused("validators_mismatch",
            lambda: verify("four", four_commit(), validators("single")))


@pytest.mark.parametrize(("mutate", "fault"), [
    (lambda p: p.__setitem__("index", 1), "index"),
    (lambda p: p.__setitem__("total", 4), "total"),
    (lambda p: p.__setitem__("aunts", p["aunts"][:-1]), "short"),
    (lambda p: p.__setitem__("aunts", [*p["aunts"], bytes(32)]), "long"),
    (lambda p: p.__setitem__("aunts", [bytes(32), *p["aunts"][1:]]), "aunt"),
    (lambda p: p.__setitem__("leaf_hash", bytes(32)), "leaf"),
])
def test_broken_tx_proofs(mutate: Callable[[dict[str, Any]], None], fault: str) -> None:
    height = tx_height("four")
    txs = C.parse_block_txs(load("four", f"block_{height}.json"))
    root = C.parse_signed_header(load("four", f"commit_{height}.json")).header.data_hash
    fields = vars(C.tx_proof(txs, 2)).copy()
    fields["aunts"] = list(fields["aunts"])
    mutate(fields)
    proof = C.TxProof(fields["total"], fields["index"], fields["leaf_hash"],
                      tuple(fields["aunts"]))
    refused("tx_not_in_block", lambda: C.verify_tx_proof(txs[2], proof, root))
    refused("tx_not_in_block", lambda: C.verify_tx_proof(txs[3], C.tx_proof(txs, 2), root))


# --- strict parsing ---------------------------------------------------------------------------------
def _set(path: str, value: Any) -> Callable[[Any], None]:
    def apply(obj: Any) -> None:
        *keys, last = path.split(".")
        for k in keys:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        if isinstance(obj, list):
            obj[int(last)] = value
        elif value is KeyError:
            del obj[last]
        else:
            obj[last] = value
    return apply


_H, _C = "signed_header.header", "signed_header.commit"


@pytest.mark.parametrize(("path", "value", "reason"), [
    (f"{_H}.height", 5, "bad_header"),
    (f"{_H}.height", "05", "bad_header"),
    (f"{_H}.height", "0", "bad_header"),
    (f"{_H}.chain_id", "", "bad_header"),
    (f"{_H}.time", "2026-12-05T17:12:23.8002605331Z", "bad_header"),
    (f"{_H}.time", "2026-02-30T00:00:00Z", "bad_header"),
    (f"{_H}.time", "2026-12-05 17:12:23Z", "bad_header"),
    (f"{_H}.data_hash", "ABC", "bad_header"),
    (f"{_H}.data_hash", "AB" * 31, "bad_header"),
    (f"{_H}.validators_hash", "", "bad_header"),
    (f"{_H}.proposer_address", "AB" * 32, "bad_header"),
    (f"{_H}.last_block_id.parts.total", "1", "bad_header"),
    (f"{_H}.evidence_hash", KeyError, "bad_header"),
    (f"{_C}.round", -1, "bad_commit"),
    (f"{_C}.round", True, "bad_commit"),
    (f"{_C}.block_id.hash", "", "bad_commit"),
    (f"{_C}.signatures", {}, "bad_commit"),
    (f"{_C}.signatures.0.block_id_flag", 4, "bad_commit"),
    (f"{_C}.signatures.0.signature", "not base64!", "bad_commit"),
    (f"{_C}.signatures.0.signature", None, "bad_commit"),
    (f"{_C}.signatures.0.validator_address", "AB" * 19, "bad_commit"),
    (f"{_C}.signatures.0", {**absent(), "validator_address": "AB" * 20}, "bad_commit"),
    (f"{_C}.signatures.0", {**absent(), "timestamp": "2020-01-01T00:00:00Z"}, "bad_commit"),
])
def test_bad_signed_headers(path: str, value: Any, reason: str) -> None:
    commit = four_commit()
    _set(path, value)(commit)
    refused(reason, lambda: C.parse_signed_header(commit))


@pytest.mark.parametrize(("path", "value"), [
    ("validators.0.power", "0"),
    ("validators.0.power", 1),
    ("validators.0.power", str(2**62)),
    ("validators.0.address", "AB" * 20),
    ("validators.0.pub_key.type", "tendermint/PubKeySecp256k1"),
    ("validators.0.pub_key.value", base64.b64encode(bytes(31)).decode()),
    ("validators.1", None),
    ("validators", []),
])
def test_bad_validators(path: str, value: Any) -> None:
    genesis = load("four", "genesis.json")
    if path == "validators.1":
        genesis["validators"][1] = genesis["validators"][0]  # listed twice
    else:
        _set(path, value)(genesis)
    refused("bad_validators", lambda: C.parse_validators(genesis))


def test_a_page_of_validators_is_not_the_set() -> None:
    page = load("four", "validators_3.json")
    page["validators"].pop()
    refused("bad_validators", lambda: C.parse_validators(page))


def test_bad_blocks_and_tx_proofs() -> None:
    block = load("four", f"block_{tx_height('four')}.json")
    block["block"]["data"]["txs"][0] = "YnVyc3QwPXcw="
    refused("bad_block", lambda: C.parse_block_txs(block))
    tx_id = next(iter(index("four")["txs"]))
    for path, value in [("proof.proof.total", 5), ("proof.proof.index", "-1"),
                        ("proof.proof.aunts.0", "AAAA"), ("proof.data", 7),
                        ("proof.proof.leaf_hash", "")]:
        answer = load("four", f"tx_{tx_id}.json")
        _set(path, value)(answer)
        refused("bad_tx_proof", lambda a=answer: C.parse_tx_proof(a))  # type: ignore[misc]


# --- encodings, exact times and trees -----------------------------------------------------------------
def read_varint(b: bytes) -> tuple[int, int]:
    n = shift = 0
    for i, byte in enumerate(b):
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i + 1
    raise ValueError("truncated")


@given(st.integers(-(2**63), 2**64 - 1))
def test_varint_round_trip(n: int) -> None:
    raw = pb.varint(n)
    value, used = read_varint(raw)
    assert used == len(raw) and value == n % 2**64
    assert len(raw) == max(1, ((n % 2**64).bit_length() + 6) // 7)
    assert all(b & 0x80 for b in raw[:-1]) and raw[-1] < 0x80


def test_varint_known_values() -> None:
    assert [pb.varint(n).hex() for n in (0, 1, 127, 128, 300, -1)] == \
        ["00", "01", "7f", "8001", "ac02", "ffffffffffffffffff01"]
    with pytest.raises(OverflowError):
        pb.varint(2**64)


@given(st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31)),
       st.integers(0, 999_999_999), st.integers(-23 * 60, 23 * 60))
def test_parse_time_is_exact(when: datetime.datetime, nanos: int, offset_min: int) -> None:
    epoch = datetime.datetime(1970, 1, 1)
    seconds = (when.replace(microsecond=0) - epoch) // datetime.timedelta(seconds=1)
    frac = f".{nanos:09d}".rstrip("0").rstrip(".")
    sign, off = ("+" if offset_min >= 0 else "-"), abs(offset_min)
    text = when.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + frac
    assert C.parse_time(text + "Z") == C.Time(seconds, nanos)
    zoned = C.parse_time(f"{text}{sign}{off // 60:02d}:{off % 60:02d}")
    assert zoned == C.Time(seconds - offset_min * 60, nanos)


def test_parse_time_known_values() -> None:
    assert C.parse_time("1970-01-01T00:00:00Z") == C.Time(0, 0)
    assert ZERO_TIME == C.Time(-62135596800, 0)
    assert C.parse_time("2026-12-05T17:12:20.4430546Z").nanos == 443054600
    for bad in ("1970-01-01T00:00:60Z", "1970-01-01T24:00:00Z", "1970-01-01T00:00:00",
                "1970-01-01T00:00:00.Z", "197０-01-01T00:00:00Z"):
        with pytest.raises(ValueError):
            C.parse_time(bad)


def _trails(items: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """crypto/merkle trailsFromByteSlices, recursively: (root, each item's aunts)."""
    if len(items) == 1:
        return merkle.leaf_hash(items[0]), [[]]
    k = 1 << ((len(items) - 1).bit_length() - 1)
    left, la = _trails(items[:k])
    right, ra = _trails(items[k:])
    return merkle.node_hash(left, right), [[*a, right] for a in la] + [[*a, left] for a in ra]


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=40))
def test_tx_proofs_are_cometbft_trails(txs: list[bytes]) -> None:
    root, trails = _trails([C.tx_hash(tx) for tx in txs])
    assert C.data_hash(txs) == root
    for i, tx in enumerate(txs):
        proof = C.tx_proof(txs, i)
        assert list(proof.aunts) == trails[i] and proof.total == len(txs)
        C.verify_tx_proof(tx, proof, root)
        for j in range(len(proof.aunts)):
            bent = (*proof.aunts[:j], bytes(32), *proof.aunts[j + 1:])
            with pytest.raises(ProtocolError, match="root mismatch") as e:
                C.verify_tx_proof(tx, C.TxProof(proof.total, i, proof.leaf_hash, bent), root)
            assert e.value.reason == "tx_not_in_block"


def test_empty_block_data_hash() -> None:
    assert C.data_hash([]) == hashlib.sha256(b"").digest()
    sh = C.parse_signed_header(load("four", "commit_1.json"))
    assert sh.header.data_hash == C.data_hash([])


def test_a_synthetic_nil_vote_verifies_but_counts_nothing() -> None:
    """A commit with a real nil vote needs the validators' keys, so build one from ours."""
    keys = [Ed25519PrivateKey.generate() for _ in range(4)]
    entries = [{"pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(
        k.public_key().public_bytes_raw()).decode()}, "power": "5"} for k in keys]
    vals = C.parse_validators(entries)
    by_address = {hashlib.sha256(k.public_key().public_bytes_raw()).digest()[:20]: k
                  for k in keys}
    real = C.parse_signed_header(four_commit())
    header = C.Header(**{**vars(real.header), "chain_id": "synthetic",
                         "validators_hash": C.validators_hash(vals)})
    block_id = C.BlockID(C.header_hash(header), 1, bytes(32))
    t = C.Time(1_700_000_000, 5)
    commit_sigs = []
    for i, v in enumerate(vals.validators):
        flag = C.FLAG_NIL if i == 0 else C.FLAG_COMMIT
        msg = C.vote_sign_bytes("synthetic", header.height, 0,
                                block_id if flag == C.FLAG_COMMIT else None, t)
        commit_sigs.append(C.CommitSig(flag, v.address, t, by_address[v.address].sign(msg)))
    sh = C.SignedHeader(header, C.Commit(header.height, 0, block_id, tuple(commit_sigs)))
    block = C.verify_commit("synthetic", sh, vals)
    assert (block.signed_power, block.total_power) == (15, 20)
    bad = C.SignedHeader(header, C.Commit(header.height, 0, block_id, (
        C.CommitSig(C.FLAG_NIL, vals.validators[0].address, t, commit_sigs[1].signature),
        *commit_sigs[1:])))
    refused("commit_bad_signature", lambda: C.verify_commit("synthetic", bad, vals))
