"""Certificate bundles, the building side: one JSON document that proves one green
certificate (docs/PROTOCOL.md section 25) offline, from its generator meter's signed
readings to the dispatch chain, assembled from the chain's API and the fog's.

    {"version": 1,
     "certificate": {...}, "generator": {...}   the chain's records (GET /v1/certificates/ID)
     "fog_pub": HEX, "devices": {meter id: pub HEX}
     "anchors": {digest: {"block_height", "block_header", "sealer_signature",
                          "transaction", "tx_index", "tx_path"}}   as in a reading's bundle
     "segments": [{"lo", "hi", "statement": HEX (type 14), "anchor": digest,
                   "readings": [{"entry": HEX, "inclusion_path": [...]}]  one per entries[i]
                   "enrollment": {"entry", "leaf_index", "inclusion_path"}}]}

A segment is one statement the certificate's Wh came from (its [lo, hi) of the generator's
certified count), with the anchor transaction that carried it; its readings (the log
entries its `entries` name, in that order) and the meter's enrollment decision in force
before the first of them are proven against that anchor's newest checkpoint, which covers
them all (a statement only names entries logged before it). Verifying one is
tools.audit_certificate's (`verify_certificate_bundle`), which needs no network.

Only an embedded chain's anchors (a sealer's signed block header) are proven for now: a
consortium's certificate raises NotSupported. Only meterledger.clients and meterledger.wire
are used here, so a service may build these bundles too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meterledger import wire as P
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.clients.fog import FogClient

CERTIFICATE_BUNDLE_VERSION = 1


class NotSupported(ChainClientError):
    """A certificate whose proof this builder cannot assemble yet (a consortium chain's)."""


def embedded_tx(tx: dict[str, Any]) -> dict[str, Any]:
    """A transaction's section (as a reading bundle's anchor: its sealed block header, its
    place in the block) from the chain API's GET /v1/tx answer, for an embedded chain."""
    if "finality" in tx:
        raise NotSupported(
            f"transaction {tx['digest']} is in a consortium (CometBFT) block: certificate "
            "and trade bundles of a consortium chain are not supported yet (a reading's "
            "bundle is)")
    signature = P.parse(bytes.fromhex(tx["header"]), schema=False).signature
    return dict(block_height=int(tx["height"]), block_header=tx["header"],
                sealer_signature=signature.hex(), transaction=tx["tx"],
                tx_index=int(tx["index"]), tx_path=tx["path"])


def carried(anchor: dict[str, Any], digest: str) -> bytes:
    """The statement of `digest` among those the anchor transaction carries (body key 4)."""
    body = P.parse(bytes.fromhex(anchor["transaction"])).fields[4]
    for raw in body.get(4, []):
        if P.digest(raw).hex() == digest:
            return bytes(raw)
    raise ChainClientError(f"the chain says statement {digest} came with an anchor that "
                           "does not carry it")


def _readings(fog: FogClient, st: P.Fields, size: int) -> list[dict[str, Any]]:
    """The log entries a measured statement names, each with its inclusion proof against
    the checkpoint of `size` entries."""
    out = []
    for index in st[7]:
        entry = fog.get(f"/v1/entries/{index}")["entry"]
        m = P.parse(bytes.fromhex(entry), schema=False)
        if m.type != P.READING:
            raise ChainClientError(
                f"entry {index}, named by the statement of meter {st[1].hex()} interval "
                f"{st[2]}, is a type-{m.type} message, not a reading: only a measured "
                "statement's readings are proven")
        proof = fog.inclusion(m.fields[1], m.fields[2], size)
        if int(proof["leaf_index"]) != index or proof["entry"] != entry:
            raise ChainClientError(f"the fog proves reading {m.fields[2]} of meter "
                                   f"{m.fields[1].hex()} as entry {proof['leaf_index']}, "
                                   f"not as entry {index}")
        out.append({"entry": entry, "inclusion_path": proof["path"]})
    return out


def statement_proof(fog: FogClient, statement: bytes, anchor: str,
                    size: int) -> dict[str, Any]:
    """A statement with what proves it against its anchor's newest checkpoint (of `size`
    entries): its readings (none for an estimated one: its entries are the fog's type-10
    estimates, which only the fog's signature stands for) and its meter's enrollment."""
    st = P.parse(statement).fields
    enrollment = fog.enrollment_proof(st[1], size, min(st[7]))
    return {"statement": statement.hex(), "anchor": anchor,
            "readings": [] if st[6] else _readings(fog, st, size),
            "enrollment": {"entry": enrollment["entry"],
                           "leaf_index": int(enrollment["leaf_index"]),
                           "inclusion_path": enrollment["path"]}}


def anchor_size(anchor: dict[str, Any]) -> int:
    """The tree size of the newest checkpoint an anchor section's transaction carries."""
    head = P.parse(bytes.fromhex(anchor["transaction"])).fields[4][1][-1]
    return int(P.parse(head).fields[3])


def _segment(fog: FogClient, seg: dict[str, Any], statement: bytes,
             size: int) -> dict[str, Any]:
    return {"lo": int(seg["lo"]), "hi": int(seg["hi"]),
            **statement_proof(fog, statement, seg["anchor"], size)}


def answered(what: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A bundle `build` assembles from the services' answers: an answer that is not what
    the service's API says becomes a ChainClientError naming `what` (a bundle's builders
    share this), and a service's own refusal stays as it was."""
    try:
        return build()
    except ChainClientError:
        raise
    except (P.ProtocolError, LookupError, TypeError, ValueError) as e:  # a malformed answer
        raise ChainClientError(f"{what}: a service answered something else than its API "
                               f"says: {type(e).__name__}: {e}") from None


def with_prev_headers(chain: ChainClient, txs: dict[str, dict[str, Any]]) -> None:
    """Each transaction section gets `prev_header`, the header of the block before its own
    (whose time the chain's rules read for it)."""
    prev: dict[int, str] = {}  # height -> the header of the block before it
    for t in txs.values():
        h = t["block_height"]
        if h not in prev:
            prev[h] = chain.block(h - 1)["header"]
        t["prev_header"] = prev[h]


def build_certificate_bundle(fog: FogClient, chain: ChainClient, cid: str) -> dict[str, Any]:
    """Ask the chain and the generator's fog node for everything that proves certificate
    `cid` ("<generator>/<lo>-<hi>"). `fog` is the fog's API (auditor tier: entries, readings'
    proofs, devices), `chain` the dispatch chain's. Raises NotSupported for a consortium's
    certificate and ChainClientError (ChainUnavailable when a service does not answer) for
    what a service refused or answered inconsistently."""
    return answered(f"certificate {cid}", lambda: _build(fog, chain, cid))


def _build(fog: FogClient, chain: ChainClient, cid: str) -> dict[str, Any]:
    answer = chain.certificate(cid)
    gen = answer["generator"]
    if answer["truncated"] or not answer["statements"]:
        raise ChainClientError(f"the chain lists {'only some' if answer['truncated'] else 'none'}"
                               f" of the statements certificate {cid} came from: its bundle "
                               "cannot be built")
    info = fog.checkpoint()
    if info["fog_id"] != gen["fog"]:
        raise ChainClientError(f"the fog at {fog.base_url} is {info['fog_id']}, but generator "
                               f"{answer['certificate']['generator']} is measured by fog "
                               f"{gen['fog']}")
    anchors: dict[str, dict[str, Any]] = {}
    sizes: dict[str, int] = {}  # anchor digest -> the size of its newest checkpoint
    segments = []
    for seg in answer["statements"]:
        d = seg["anchor"]
        if d not in anchors:
            anchors[d] = embedded_tx(chain.tx(d))
            sizes[d] = anchor_size(anchors[d])
        segments.append(_segment(fog, seg, carried(anchors[d], seg["digest"]), sizes[d]))
    keys = {dev["dev"]: dev["pub"] for dev in fog.devices()}
    if gen["meter"] not in keys:
        raise ChainClientError(f"the fog lists no key of meter {gen['meter']}")
    return {"version": CERTIFICATE_BUNDLE_VERSION, "certificate": answer["certificate"],
            "generator": gen, "fog_pub": info["fog_pub"],
            "devices": {gen["meter"]: keys[gen["meter"]]}, "anchors": anchors,
            "segments": segments}
