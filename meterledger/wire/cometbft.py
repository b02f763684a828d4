"""Offline proof that a CometBFT v0.38 block was committed by its validator set, and that a
transaction is in it: what a third party holding one proof file checks without trusting any
operator or node. Pure; needs nothing but `cryptography` (ed25519).

The inputs are what CometBFT's own JSON-RPC returns (`meterledger.wire.cometbft_types`
parses them strictly); the encodings hashed and signed are written out by hand in
`meterledger.wire.cometbft_proto`; trees are `meterledger.wire.merkle`, whose RFC 6962 /
RFC 9162 hashing (leaf 0x00, node 0x01, split at the largest power of two below n, the
empty tree SHA-256("")) is exactly CometBFT's crypto/merkle.

verify_commit follows types.VerifyCommit (validation.go), the full check a node makes of a
block's LastCommit, not the light client's early exit: every signature that is not absent is
verified, and one bad signature fails the whole commit even when the others already exceed
two thirds, so an accepted commit holds no forged signature. Signature i must come from
validator i of the set in CometBFT's order (power descending, address ascending). Votes for
nil are verified too but count no power. The threshold is CometBFT's `signed >
total * 2 // 3`, which for integers is exactly 3 * signed > 2 * total.

ed25519 here is RFC 8032 as OpenSSL checks it (canonical encodings, cofactorless); CometBFT
verifies with ZIP-215, which accepts a superset of that. Honest signatures pass both; a
signature crafted to pass only under ZIP-215's leniency is refused here, so this verifier
never accepts a commit CometBFT would refuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meterledger.errors import ProtocolError
from meterledger.wire import cometbft_proto as pb
from meterledger.wire import merkle
from meterledger.wire.cometbft_types import (
    FLAG_ABSENT,
    FLAG_COMMIT,
    FLAG_NIL,
    BlockID,
    Commit,
    CommitSig,
    Header,
    SignedHeader,
    Time,
    TxProof,
    Validator,
    ValidatorSet,
    parse_block_txs,
    parse_signed_header,
    parse_time,
    parse_tx_proof,
    parse_validators,
)

__all__ = [
    "FLAG_ABSENT", "FLAG_COMMIT", "FLAG_NIL", "REASONS", "BlockID", "Commit", "CommitSig",
    "Header", "SignedHeader", "Time", "TxProof", "Validator", "ValidatorSet", "VerifiedBlock",
    "data_hash", "genesis_app_state", "genesis_tx", "header_hash", "parse_block_txs", "parse_signed_header", "parse_time",
    "parse_tx_proof", "parse_validators", "tx_hash", "tx_proof", "validators_hash",
    "verify_commit", "verify_tx_in_block", "verify_tx_proof", "vote_sign_bytes",
]

REASONS = (
    "bad_header", "bad_commit", "bad_validators", "bad_block", "bad_tx_proof",
    "commit_wrong_chain", "commit_wrong_block", "validators_mismatch", "commit_wrong_size",
    "commit_unknown_signer", "commit_duplicate_signer", "commit_signer_order",
    "commit_bad_signature", "commit_insufficient_power", "tx_not_in_block",
)
"""Every reason code this module and cometbft_types raise, in the order verify checks."""


@dataclass(frozen=True)
class VerifiedBlock:
    """A header whose commit verify_commit accepted: `hash` is its block hash (what the
    commit signed), `signers` the addresses whose precommits for it counted."""

    chain_id: str
    height: int
    hash: bytes
    time: Time
    header: Header
    signed_power: int
    total_power: int
    signers: tuple[bytes, ...]


def _root(items: Sequence[bytes]) -> bytes:
    """crypto/merkle.HashFromByteSlices: the RFC 6962 root over the items as leaves."""
    return merkle.root_from_leaf_hashes([merkle.leaf_hash(item) for item in items])


def header_hash(header: Header) -> bytes:
    """types.Header.Hash: the Merkle root of the 14 fields, each proto-encoded; the scalar
    ones inside their gogoproto wrapper (cdcEncode), version, time and last_block_id as
    their own messages."""
    h, last = header, header.last_block_id
    return _root([
        pb.consensus_version(h.version_block, h.version_app),
        pb.cdc_string(h.chain_id),
        pb.cdc_int64(h.height),
        pb.timestamp(h.time.seconds, h.time.nanos),
        pb.block_id(last.hash, last.parts_total, last.parts_hash),
        pb.cdc_bytes(h.last_commit_hash),
        pb.cdc_bytes(h.data_hash),
        pb.cdc_bytes(h.validators_hash),
        pb.cdc_bytes(h.next_validators_hash),
        pb.cdc_bytes(h.consensus_hash),
        pb.cdc_bytes(h.app_hash),
        pb.cdc_bytes(h.last_results_hash),
        pb.cdc_bytes(h.evidence_hash),
        pb.cdc_bytes(h.proposer_address),
    ])


def validators_hash(validators: ValidatorSet) -> bytes:
    """types.ValidatorSet.Hash: the Merkle root of each validator's SimpleValidator
    (public key, voting power), in the set's order."""
    return _root([pb.simple_validator(v.pub_key, v.power) for v in validators.validators])


def vote_sign_bytes(chain_id: str, height: int, round: int, block_id: BlockID | None,
                    timestamp: Time) -> bytes:
    """types.VoteSignBytes of a precommit: the length-delimited CanonicalVote. block_id is
    None (or zero) for a vote for nil, which leaves the CanonicalBlockID out."""
    canonical = None if block_id is None or block_id.is_zero else pb.block_id(
        block_id.hash, block_id.parts_total, block_id.parts_hash)
    return pb.delimited(pb.canonical_vote(height, round, canonical, timestamp.seconds,
                                          timestamp.nanos, chain_id))


def _short(b: bytes) -> str:
    return b[:6].hex().upper()


def _check_block(chain_id: str, sh: SignedHeader, validators: ValidatorSet) -> bytes:
    """The commit is for this header on this chain, by this validator set; its hash."""
    header, commit = sh.header, sh.commit
    if header.chain_id != chain_id:
        raise ProtocolError("commit_wrong_chain",
                            f"header is for chain {header.chain_id!r}, not {chain_id!r}")
    block_hash = header_hash(header)
    if commit.height != header.height or commit.block_id.hash != block_hash:
        raise ProtocolError(
            "commit_wrong_block",
            f"commit is for block {_short(commit.block_id.hash)} at height {commit.height}, "
            f"the header is block {_short(block_hash)} at height {header.height}")
    if validators_hash(validators) != header.validators_hash:
        raise ProtocolError(
            "validators_mismatch",
            f"the validators hash to {_short(validators_hash(validators))}, the header "
            f"commits to {_short(header.validators_hash)}")
    if len(commit.signatures) != len(validators.validators):
        raise ProtocolError(
            "commit_wrong_size",
            f"commit has {len(commit.signatures)} signature slots for "
            f"{len(validators.validators)} validators")
    return block_hash


def _signer(i: int, sig: CommitSig, validators: ValidatorSet, index: dict[bytes, int],
            seen: set[bytes]) -> Validator:
    """The validator a present signature slot i belongs to, or why it belongs to none."""
    at = index.get(sig.validator_address)
    if at is None:
        raise ProtocolError("commit_unknown_signer", f"signature {i} is from "
                            f"{_short(sig.validator_address)}, not in the validator set")
    if sig.validator_address in seen:
        raise ProtocolError("commit_duplicate_signer", f"signature {i}: "
                            f"{_short(sig.validator_address)} has already signed")
    seen.add(sig.validator_address)
    if at != i:
        raise ProtocolError("commit_signer_order", f"signature {i} is from validator {at}; "
                            "slot i belongs to validator i of the set")
    return validators.validators[at]


def _tally(chain_id: str, commit: Commit, validators: ValidatorSet) -> list[Validator]:
    """Verify every present signature; the validators whose precommits for the block count."""
    index, seen, counted = validators.by_address(), set[bytes](), []
    for i, sig in enumerate(commit.signatures):
        if sig.flag == FLAG_ABSENT:
            continue
        val = _signer(i, sig, validators, index, seen)
        block_id = commit.block_id if sig.flag == FLAG_COMMIT else None
        msg = vote_sign_bytes(chain_id, commit.height, commit.round, block_id, sig.timestamp)
        try:
            Ed25519PublicKey.from_public_bytes(val.pub_key).verify(sig.signature, msg)
        except (InvalidSignature, ValueError):
            raise ProtocolError("commit_bad_signature", f"signature {i} by "
                                f"{_short(val.address)} does not verify") from None
        if sig.flag == FLAG_COMMIT:
            counted.append(val)
    return counted


def verify_commit(chain_id: str, signed_header: SignedHeader,
                  validators: ValidatorSet) -> VerifiedBlock:
    """Check that more than two thirds of the voting power of `validators` signed this
    header on chain `chain_id`; raises ProtocolError with the first failing check's reason
    (commit_wrong_chain, commit_wrong_block, validators_mismatch, commit_wrong_size, then
    per signature slot commit_unknown_signer, commit_duplicate_signer, commit_signer_order,
    commit_bad_signature, and last commit_insufficient_power)."""
    block_hash = _check_block(chain_id, signed_header, validators)
    counted = _tally(chain_id, signed_header.commit, validators)
    signed, total = sum(v.power for v in counted), validators.total_power
    if 3 * signed <= 2 * total:
        raise ProtocolError("commit_insufficient_power", f"{signed} of {total} voting power "
                            "signed the block; more than two thirds is needed")
    h = signed_header.header
    return VerifiedBlock(h.chain_id, h.height, block_hash, h.time, h, signed, total,
                         tuple(v.address for v in counted))


# --- the chain's genesis in CometBFT's genesis.json -------------------------------------------
def genesis_app_state(genesis_tx: bytes) -> dict[str, Any]:
    """genesis.json's app_state: {"meterledger": {"genesis_tx": HEX}}, the chain's first
    transaction (the dispatch key registering itself; docs/PROTOCOL.md section 23)."""
    return {"meterledger": {"genesis_tx": genesis_tx.hex()}}


def genesis_tx(app_state: Any) -> bytes:
    """The genesis transaction in a genesis.json's app_state; ProtocolError("bad_genesis")
    for any other shape."""
    try:
        text = app_state["meterledger"]["genesis_tx"]
        if isinstance(text, str):
            return bytes.fromhex(text)
    except (KeyError, TypeError, ValueError):
        pass
    raise ProtocolError("bad_genesis", 'app_state must be {"meterledger": {"genesis_tx": HEX}}')


# --- transactions ---------------------------------------------------------------------------------
def tx_hash(tx: bytes) -> bytes:
    """types.Tx.Hash: SHA-256 of the raw transaction (its id in the RPC, as upper hex)."""
    return hashlib.sha256(tx).digest()


def _tx_leaves(txs: Sequence[bytes]) -> list[bytes]:
    return [merkle.leaf_hash(tx_hash(tx)) for tx in txs]


def data_hash(txs: Sequence[bytes]) -> bytes:
    """types.Txs.Hash, the header's data_hash: the tree whose leaves are the txs' hashes,
    so a leaf hash is SHA-256(0x00 || SHA-256(tx))."""
    return merkle.root_from_leaf_hashes(_tx_leaves(txs))


def tx_proof(txs: Sequence[bytes], index: int) -> TxProof:
    """types.Txs.Proof(index).Proof: aunts from the leaf's sibling up to the root's child,
    which is RFC 9162's PATH order. Raises merkle.TreeRangeError for an index not in txs."""
    leaves = _tx_leaves(txs)
    path = merkle.inclusion_path(
        index, len(leaves), lambda lo, hi: merkle.root_from_leaf_hashes(leaves[lo:hi]))
    return TxProof(len(leaves), index, leaves[index], tuple(path))


def verify_tx_proof(tx: bytes, proof: TxProof, data_hash: bytes) -> None:
    """crypto/merkle.Proof.Verify of tx against a (verified) header's data_hash; raises
    ProtocolError("tx_not_in_block")."""
    if proof.leaf_hash != merkle.leaf_hash(tx_hash(tx)):
        raise ProtocolError("tx_not_in_block", f"the proof is for leaf "
                            f"{_short(proof.leaf_hash)}, not for this transaction")
    try:
        merkle.verify_inclusion(proof.leaf_hash, proof.index, proof.total, proof.aunts,
                                data_hash)
    except merkle.MerkleError as e:
        raise ProtocolError("tx_not_in_block", f"tx {proof.index} of {proof.total}: {e}") \
            from None


def verify_tx_in_block(chain_id: str, signed_header: SignedHeader, validators: ValidatorSet,
                       tx: bytes, proof: TxProof) -> VerifiedBlock:
    """verify_commit, then verify_tx_proof against the committed header's data_hash."""
    block = verify_commit(chain_id, signed_header, validators)
    verify_tx_proof(tx, proof, block.header.data_hash)
    return block
