"""Bill bundles, the building side: one JSON document that proves one bill (docs/PROTOCOL.md
section 28) offline, from the meter's signed readings to the receipt on the dispatch chain.

    {"version": 1,
     "bill": {...}                 the bill document (meterledger.wire.billing.bill_document)
     "receipt": digest             the utility's bl_receipt naming the bill's digest
     "tariff": digest, "approval": digest   the tariff version's bl_tariff and bl_approve
     "keys": {participant id: pub HEX}      of the utility, the regulator and the fog
     "transactions": {digest: {"block_height", "block_header", "sealer_signature",
                               "transaction", "tx_index", "tx_path", "prev_header"}}
                                   the three above, each outage credit's bl_credit and the
                                   fog's outage record (fault) it names, and each points
                                   redemption's bl_redeem, each with its
                                   sealed block and the block before (whose time the
                                   chain's rules read)
     "fog_pub": HEX, "devices": {meter id: pub HEX}   the bill's meter and its fog
     "anchors": {digest: section as a transaction's, without prev_header}   one anchor of
                                   the fog whose newest checkpoint holds every entry below
     "readings": [{"entry", "leaf_index", "inclusion_path"}]   the readings that bound the
                                   measured intervals (the bill's and its outage credits'
                                   windows'), by seq
     "estimates": [{"entry", "leaf_index", "inclusion_path"}]  the fog's type-10 estimates
                                   of the estimated intervals, by log index
     "enrollment": {"entry", "leaf_index", "inclusion_path"}}  the meter's decision in force
                                   before its first reading of the bundle

Each interval the bill lists names where its energy came from (`usage`: the seq of the
reading closing a measured interval, the log index of an estimate), so the bundle is built
from the bill alone, whatever the fog learnt since. Verifying one is tools.audit_bill's
(`verify_bill_bundle`), which needs no network and reruns the bill to the cent.

Only an embedded chain's blocks (a sealer's signed header) are proven for now, as for
certificates and trades. Only meterledger.clients and meterledger.wire are used here.
"""

from __future__ import annotations

from typing import Any

from meterledger import wire as P
from meterledger.clients.bundle import NotAnchored
from meterledger.clients.certificate_bundle import (
    anchor_size,
    answered,
    embedded_tx,
    with_prev_headers,
)
from meterledger.clients.chain import ChainClient, ChainClientError, ChainUnavailable
from meterledger.clients.fog import FogClient
from meterledger.wire import billing as BL

BILL_BUNDLE_VERSION = 1


def build_bill_bundle(fog: FogClient, chain: ChainClient, bill: dict[str, Any]
                      ) -> dict[str, Any]:
    """Ask the chain and the meter's fog node for everything that proves `bill` (a bill
    document as the billing run wrote it). `fog` is the fog's API (auditor tier: readings,
    estimates and their proofs, devices), `chain` the dispatch chain's. Raises NotAnchored
    when no anchor of the fog covers the bill's entries yet, NotSupported for a consortium
    chain's, and ChainClientError for what a service refused or answered inconsistently
    (a bill without a receipt, or one a correction replaced, among them)."""
    return answered(f"the bill of {bill.get('account')} from {bill.get('start')}",
                    lambda: _build(fog, chain, bill))


def _receipt(chain: ChainClient, bill: dict[str, Any]) -> str:
    """The digest of the receipt that names this bill: the account's latest for its period."""
    digest = BL.bill_digest(bill).hex()
    page = chain.billing_receipts(bill["account"], after=bill["start"] - 1, limit=1)
    found = [r for r in page["receipts"] if r["start"] == bill["start"]]
    if not found:
        raise ChainClientError(f"the chain has no receipt of account {bill['account']} for "
                               f"the period from {bill['start']}")
    if found[0]["bill"] != digest:
        raise ChainClientError(
            f"the receipt of account {bill['account']} from {bill['start']} names bill "
            f"{found[0]['bill']}, not this one ({digest}): a correction replaced it, or it "
            "was never sent")
    tx: str = found[0]["tx"]
    return tx


def _tariff(chain: ChainClient, bill: dict[str, Any]) -> tuple[str, str]:
    """The digests of the bill's tariff version's proposal and approval."""
    for v in chain.billing_tariff(bill["tariff"])["versions"]:
        if v["version"] == bill["tariff_version"] and v["approved"]:
            return v["tx"], v["approval"]
    raise ChainClientError(f"tariff {bill['tariff']!r} has no approved version "
                           f"{bill['tariff_version']}")


def _anchor(fog: FogClient, chain: ChainClient, fog_id: str) -> tuple[str, dict[str, Any]]:
    """The fog's newest anchor: its checkpoint holds every entry logged before it."""
    anchors = chain.anchors(fog_id)
    if not anchors:
        raise NotAnchored(f"fog {fog_id} has no anchor on the chain yet")
    digest: str = anchors[-1]["digest"]
    return digest, embedded_tx(chain.tx(digest))


def _proof(p: dict[str, Any]) -> dict[str, Any]:
    return {"entry": p["entry"], "leaf_index": int(p["leaf_index"]),
            "inclusion_path": p["path"]}


# long: the bill's sources, each fetched with its proof against one anchored checkpoint
def _entries(fog: FogClient, bill: dict[str, Any], meter: bytes,
             size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The readings bounding the bill's measured intervals and the estimates of its
    estimated ones, each with its inclusion proof in the tree of `size` entries."""
    seqs: set[int] = set()
    leaves: set[int] = set()
    rows = [*bill["usage"], *(u for c in bill["compensation"] for u in c["usage"])]
    for _, _, _, est, ref in rows:
        if est:
            leaves.add(ref)
        else:
            seqs.update((ref - 1, ref))
    readings, estimates = [], []
    for seq in sorted(seqs):
        try:
            readings.append(_proof(fog.inclusion(meter, seq, size)))
        except ChainUnavailable:
            raise
        except ChainClientError as e:
            raise NotAnchored(f"reading {seq} of meter {meter.hex()} is not in the tree of "
                              f"the fog's newest anchor ({size} entries): {e}") from None
    for leaf in sorted(leaves):
        if leaf >= size:
            raise NotAnchored(f"estimate {leaf} is not in the tree of the fog's newest anchor "
                              f"({size} entries) yet")
        p = _proof(fog.entry_proof(leaf, size))
        m = P.parse(bytes.fromhex(p["entry"]), schema=False)
        if m.type != P.ESTIMATE or m.fields.get(1) != meter:
            raise ChainClientError(f"entry {leaf}, which the bill names as an estimate of "
                                   f"meter {meter.hex()}, is not one")
        estimates.append(p)
    return readings, estimates


def _build(fog: FogClient, chain: ChainClient, bill: dict[str, Any]) -> dict[str, Any]:
    meter = bytes.fromhex(bill["meter"])
    receipt = _receipt(chain, bill)
    tariff, approval = _tariff(chain, bill)
    credits = [d for c in bill["compensation"] for d in (c["credit"], c["fault"])]
    credits += [r["redeem"] for r in bill["points"]]
    txs = {d: embedded_tx(chain.tx(d)) for d in (receipt, tariff, approval, *credits)}
    with_prev_headers(chain, txs)
    senders = {P.parse(bytes.fromhex(t["transaction"]), schema=False).fields[1].hex()
               for t in txs.values()}
    pubs = {p["id"]: p["pub"] for p in chain.participants()}
    info = fog.checkpoint()
    devices = {dev["dev"]: dev["pub"] for dev in fog.devices()}
    if bill["meter"] not in devices:
        raise ChainClientError(f"the fog at {fog.base_url} lists no key of meter "
                               f"{bill['meter']}: it is not the bill's meter's fog")
    digest, anchor = _anchor(fog, chain, info["fog_id"])
    size = anchor_size(anchor)
    readings, estimates = _entries(fog, bill, meter, size)
    first = min([r["leaf_index"] for r in readings + estimates], default=size)
    enrollment = fog.enrollment_proof(meter, size, first)
    return {"version": BILL_BUNDLE_VERSION, "bill": bill, "receipt": receipt,
            "tariff": tariff, "approval": approval,
            "keys": {pid: pubs[pid] for pid in sorted(senders)}, "transactions": txs,
            "fog_pub": info["fog_pub"], "devices": {bill["meter"]: devices[bill["meter"]]},
            "anchors": {digest: anchor}, "readings": readings, "estimates": estimates,
            "enrollment": _proof(enrollment)}
