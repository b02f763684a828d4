"""Proof bundles, the building side (SPEC section 9): one JSON document that proves one
reading, from the meter to the dispatch chain, assembled from the fog's API and the chain's.

`build_bundle` is what `python -m tools.audit bundle` writes and what the fog's own
GET /v1/bundle answers (fog_node.dashboard, through an in-process FogClient), so both
give the same document; verifying one is tools.audit's (`verify_bundle`), which needs no
network. Version 1 is an embedded chain's bundle (a sealer's signed block header); version
2 a consortium's (CometBFT's signed header and the transaction's proof instead,
docs/PROTOCOL.md section 23: `anchor_section`). Only meterledger.clients and
meterledger.wire are used here, so a service may build bundles without importing tools.
"""

from __future__ import annotations

from typing import Any

from meterledger import wire as P
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.clients.fog import FogClient

BUNDLE_VERSION = 1  # an embedded chain's bundle: the block is proven by the sealer's key
VERSION = 2  # a consortium's bundle: CometBFT's commit of the block (tools.audit_consortium)


def _h(b: bytes) -> str:
    return b.hex()


def anchor_section(tx: dict[str, Any]) -> dict[str, Any]:
    """The bundle's anchor from the chain API's GET /v1/tx answer of a consortium node."""
    finality = tx["finality"]
    return {"block_height": int(tx["height"]), "transaction": tx["tx"],
            "tx_index": int(tx["index"]), "signed_header": finality["signed_header"],
            "tx_proof": finality["tx_proof"]}


class NotAnchored(ChainClientError):
    """The reading is logged but no anchor of the fog on the chain covers it yet."""


def build_bundle(fog: FogClient, chain: ChainClient, dev: bytes, seq: int) -> dict[str, Any]:
    """Ask the fog node and the chain for everything that proves reading (dev, seq).
    `fog` is the fog's API (auditor tier), `chain` the dispatch chain's. Raises
    NotAnchored when no anchor covers the reading yet, and ChainClientError (its
    ChainUnavailable when a service does not answer) for what a service refused."""
    info = fog.checkpoint()
    fog_pub, fog_id = bytes.fromhex(info["fog_pub"]), info["fog_id"]
    first = fog.inclusion(dev, seq)
    leaf = int(first["leaf_index"])
    anchors = [a for a in chain.anchors(fog_id) if int(a["size"]) > leaf]
    if not anchors:
        raise NotAnchored(f"reading {seq} of {dev.hex()} (entry {leaf}) is not anchored "
                          "yet: no anchor of this fog covers it")
    anchor = anchors[0]
    tx = chain.tx(anchor["digest"])
    tx_raw = bytes.fromhex(tx["tx"])
    head = P.parse(tx_raw).fields[4][1][-1]
    size = int(anchor["size"])
    proof = fog.inclusion(dev, seq, size)
    enrollment = fog.enrollment_proof(dev, size, leaf)
    devices = {d["dev"]: d for d in fog.devices()}
    header = bytes.fromhex(tx["header"])
    if "finality" in tx:  # a consortium's block: CometBFT's commit instead of a sealer
        anchor = anchor_section(tx)
    else:
        anchor = {
            "block_height": int(tx["height"]),
            "block_header": tx["header"],
            "sealer_signature": _h(P.parse(header, schema=False).signature),
            "transaction": tx["tx"],
            "tx_index": int(tx["index"]),
            "tx_path": tx["path"],
        }
    return {
        "version": VERSION if "finality" in tx else BUNDLE_VERSION,
        "reading": proof["entry"],
        "device_pub": devices[dev.hex()]["pub"],
        "enrollment": {"entry": enrollment["entry"], "leaf_index": enrollment["leaf_index"],
                       "inclusion_path": enrollment["path"]},
        "leaf_index": leaf,
        "tree_size": size,
        "inclusion_path": proof["path"],
        "checkpoint": _h(head),
        "fog_pub": _h(fog_pub),
        "anchor": anchor,
    }
