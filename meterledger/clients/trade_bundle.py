"""Trade bundles, the building side: one JSON document that proves one settled market
contract (docs/PROTOCOL.md section 27) offline, from the two orders to the settlement, with
the seller's delivery traced back to its meter's signed readings.

    {"version": 1,
     "contract": {...}        the chain's record (GET /v1/market/cycles/C/contracts/N), with
                              "cycle" and "n"; every transaction it names is in transactions
     "enrolment": digest      the grid operator's mk_enroll binding the seller to its meter
     "keys": {participant id: pub HEX}   of every transaction's sender: the buyer, the
                                         seller, the grid operator
     "transactions": {digest: {"block_height", "block_header", "sealer_signature",
                               "transaction", "tx_index", "tx_path", "prev_header"}}
                              prev_header: the block before (whose time the rules read)
     "fog_pub": HEX, "devices": {meter id: pub HEX}   the seller's fog and meter
     "anchors": {digest: section as above}   the anchors that carried the statements
     "statements": [{"statement": HEX (type 14), "anchor": digest,
                     "readings": [{"entry", "inclusion_path"}]  (none for an estimated one)
                     "enrollment": {"entry", "leaf_index", "inclusion_path"}}]
     "earlier": [{"n", "wh", "delivered"}]}   the seller's contracts before this one in the
                                               cycle, whose delivery came first

The statements are those the chain counted for the seller's meter in the cycle (its
mk.delivery record), in the order the chain counted them; a statement's proof is the
certificate bundle's (meterledger.clients.certificate_bundle.statement_proof). Verifying one
is tools.audit_trade's (`verify_trade_bundle`), which needs no network.

Only an embedded chain's blocks (a sealer's signed header) are proven for now, as for
certificates. Only meterledger.clients and meterledger.wire are used here.
"""

from __future__ import annotations

from typing import Any

from meterledger import wire as P
from meterledger.clients.certificate_bundle import (
    anchor_size,
    answered,
    carried,
    embedded_tx,
    statement_proof,
    with_prev_headers,
)
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.clients.fog import FogClient

TRADE_BUNDLE_VERSION = 1
# the contract fields naming transactions: one digest, or a list of them
TX_FIELDS = ("tx", "orders", "signs", "settled", "params", "settle_params", "commits")
_PAGE = 500  # contracts asked per page for the seller's earlier ones


def build_trade_bundle(fog: FogClient, chain: ChainClient, cycle: int,
                       n: int) -> dict[str, Any]:
    """Ask the chain and the seller's fog node for everything that proves contract `n` of
    `cycle`. `fog` is the fog's API (auditor tier: entries, readings' proofs, devices),
    `chain` the dispatch chain's. Raises NotSupported for a consortium's contract and
    ChainClientError for what a service refused or answered inconsistently (a contract
    not settled yet among them)."""
    return answered(f"contract {cycle}/{n}", lambda: _build(fog, chain, cycle, n))


def _digests(c: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name in TX_FIELDS:
        value = c.get(name)
        out += value if isinstance(value, list) else [] if value is None else [value]
    return out


def _earlier(chain: ChainClient, cycle: int, n: int, seller: str) -> list[dict[str, int]]:
    """The seller's settled contracts numbered below `n`: the chain shares its export among
    its contracts in contract order."""
    out: list[dict[str, int]] = []
    after: int | None = None
    while True:
        page = chain.market_contracts(cycle, after, _PAGE)
        for c in page["contracts"]:
            if int(c["n"]) >= n:
                return out
            if c["seller"] == seller and c["state"] == "settled":
                out.append({"n": int(c["n"]), "wh": int(c["wh"]),
                            "delivered": int(c["delivered"])})
        if page["next"] is None:
            return out
        after = int(page["next"])


def _build(fog: FogClient, chain: ChainClient, cycle: int, n: int) -> dict[str, Any]:
    c = chain.market_contract(cycle, n)
    if c["state"] != "settled":
        raise ChainClientError(f"contract {cycle}/{n} is {c['state']}: only a settled contract "
                               "is a trade to prove (mk_settle settles its cycle after delivery)")
    c.pop("reviews", None)
    seller = c["seller"]
    enrolment = chain.market_enrolment(seller)
    if enrolment is None:
        raise ChainClientError(f"the chain has no enrolment of seller {seller}")
    info = fog.checkpoint()
    if info["fog_id"] != enrolment["fog"]:
        raise ChainClientError(f"the fog at {fog.base_url} is {info['fog_id']}, but seller "
                               f"{seller} is measured by fog {enrolment['fog']}")
    txs = {d: embedded_tx(chain.tx(d)) for d in [*_digests(c), enrolment["tx"]]}
    with_prev_headers(chain, txs)
    senders = {P.parse(bytes.fromhex(t["transaction"]), schema=False).fields[1].hex()
               for t in txs.values()}
    pubs = {p["id"]: p["pub"] for p in chain.participants()}
    keys = {pid: pubs[pid] for pid in sorted(senders)}
    delivery = chain.market_delivery(seller, cycle)["delivery"] or {"statements": [],
                                                                    "anchors": []}
    anchors: dict[str, dict[str, Any]] = {}
    statements = []
    for digest, anchor in zip(delivery["statements"], delivery["anchors"], strict=True):
        if anchor not in anchors:
            anchors[anchor] = embedded_tx(chain.tx(anchor))
        statements.append(statement_proof(fog, carried(anchors[anchor], digest), anchor,
                                          anchor_size(anchors[anchor])))
    meter = enrolment["meter"]
    devices = {dev["dev"]: dev["pub"] for dev in fog.devices()}
    if meter not in devices:
        raise ChainClientError(f"the fog lists no key of meter {meter}")
    return {"version": TRADE_BUNDLE_VERSION, "contract": {"cycle": cycle, "n": n, **c},
            "enrolment": enrolment["tx"], "keys": keys, "transactions": txs,
            "fog_pub": info["fog_pub"], "devices": {meter: devices[meter]},
            "anchors": anchors, "statements": statements,
            "earlier": _earlier(chain, cycle, n, seller)}
