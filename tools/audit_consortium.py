"""The consortium's part of a proof bundle (version 2): the anchor transaction's block is
proven by CometBFT's signed header and the validators' precommit signatures, checked against
the validator set of the network's genesis.json, instead of one sealer's signature
(docs/PROTOCOL.md section 23).

    "anchor": {"block_height": H, "transaction": HEX, "tx_index": I,
               "signed_header": {header, commit}   CometBFT's /commit?height=H answer
               "tx_proof": {root_hash, data, proof}}  CometBFT's /tx?prove=true `proof`

`tx_index` is the transaction's place in the block (its receipt's index), which must be the
proof's: every transaction of a committed block was accepted, since honest validators reject
a proposal holding one the rules refuse (docs/PROTOCOL.md section 23).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterledger import errors
from meterledger import wire as P

# the version and the anchor of a consortium's bundle are built with the rest of the bundle
# (meterledger.clients.bundle, which the fog's GET /v1/bundle uses too): named here as before
from meterledger.clients.bundle import VERSION as VERSION
from meterledger.clients.bundle import anchor_section as anchor_section
from meterledger.wire import cometbft as W

ANCHOR_SHAPE: dict[str, Any] = {"block_height": "uint", "transaction": "hex", "tx_index": "uint",
                                "signed_header": "object", "tx_proof": "object"}
# the checks that take the place of the sealer's (block_signature .. tx_inclusion)
CHECKS = (
    ("commit", "validators of the genesis holding more than 2/3 of its voting power signed "
               "the block for its chain id (CometBFT's canonical precommits, ed25519)"),
    ("block_height", "the committed block has the bundle's block height"),
    ("chain_id", "the transaction names the chain that genesis.json's first transaction "
                 "created"),
    ("tx_inclusion", "the anchor is a transaction of the committed block (its data hash)"),
)


class GenesisError(errors.ConfigError):
    """A genesis.json that cannot be used to verify; the message says why."""


@dataclass(frozen=True)
class Genesis:
    """What a verifier trusts of a consortium: CometBFT's chain id, its validators, and the
    dispatch chain id its app_state's genesis transaction created."""

    chain_name: str
    chain: bytes
    validators: W.ValidatorSet


def load_genesis(path: Path) -> Genesis:
    try:
        doc = json.loads(path.read_text())
        raw = W.genesis_tx(doc["app_state"])
        chain = P.parse(raw, schema=False).kid
        name = doc["chain_id"]
        validators = W.parse_validators(doc)
    except OSError as e:
        raise GenesisError(f"--validators {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, P.ProtocolError) as e:
        raise GenesisError(f"--validators {path} is not a MeterLedger consortium's "
                           f"genesis.json: {e}") from None
    if not isinstance(name, str):
        raise GenesisError(f"--validators {path}: chain_id is not a string")
    return Genesis(name, chain, validators)


@dataclass(frozen=True)
class Committed:
    height: int
    signers: str  # who signed, for the verdict line


def verify_anchor(v: dict[str, Any], tx_chain: bytes, genesis: Genesis,
                  fail: type[Exception]) -> Committed:
    """The consortium checks of CHECKS on a bundle's fields `v`; raises `fail(check,
    detail)` (audit.BundleError) naming the first that fails."""
    try:
        signed = W.parse_signed_header(v["anchor.signed_header"])
        tx_in_proof, proof = W.parse_tx_proof(v["anchor.tx_proof"])
    except P.ProtocolError as e:
        raise fail("commit", f"{e.reason}: {e}") from None
    try:
        block = W.verify_commit(genesis.chain_name, signed, genesis.validators)
    except P.ProtocolError as e:
        raise fail("commit", f"{e.reason}: {e}") from None
    if block.height != v["anchor.block_height"]:
        raise fail("block_height", f"the committed block is height {block.height}, the bundle "
                                   f"says {v['anchor.block_height']}")
    if tx_chain != genesis.chain:
        raise fail("chain_id", f"the transaction is for chain {tx_chain.hex()}, the genesis "
                               f"created chain {genesis.chain.hex()}")
    raw = v["anchor.transaction"]
    if tx_in_proof != raw:
        raise fail("tx_inclusion", "tx_proof proves another transaction")
    # every transaction of a committed block was accepted (honest validators reject a
    # proposal holding one the rules refuse), so its receipt index is its place in the block
    if v["anchor.tx_index"] != proof.index:
        raise fail("tx_inclusion", f"tx_index {v['anchor.tx_index']}, but the proof puts it "
                                   f"at {proof.index}")
    try:
        W.verify_tx_proof(raw, proof, block.header.data_hash)
    except P.ProtocolError as e:
        raise fail("tx_inclusion", f"{e.reason}: {e}") from None
    return Committed(block.height, f"{len(block.signers)} of {len(genesis.validators.validators)}"
                                   f" validators ({block.signed_power}/{block.total_power} "
                                   "power)")
