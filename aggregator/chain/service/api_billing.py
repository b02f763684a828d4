"""The chain API's reads of tariffs and bill receipts (docs/PROTOCOL.md section 28): every
version of a tariff with its two signatures' transactions, and an account's receipts (the
bills' digests and totals, never their intervals). GET; bytes as hex; public, like the
blocks they are derived from."""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.app import tariffs as TF
from aggregator.chain.ledger import Ledger
from aggregator.chain.service.api_reads import bad, bounded, number, party_id
from meterledger.infra import http as H
from meterledger.wire import billing as BL
from meterledger.wire.decoded import BODY_NAMES
from meterledger.wire.names import to_json
from meterledger.wire.schema import TIME_MAX

VERSIONS = 1000  # a tariff's versions in one answer (one a month is 83 years)
RECEIPTS = (100, 1000)  # an account's receipts per answer (default, most)


def tariff_json(rec: dict[str, Any]) -> dict[str, Any]:
    """A tariff record with its body by name (periods, rates, the compensation rule)."""
    names = BODY_NAMES[BL.BL_TARIFF]
    body = {names[k]: v for k, v in sorted(rec["body"].items())}
    return {**to_json({k: v for k, v in rec.items() if k != "body"}), **to_json(body),
            "approved": "approval" in rec}


class BillingReads:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[H.Route]:
        R, Q, P = H.Route, H.Param, H.PUBLIC
        return [
            R("/v1/billing/tariffs/{name}", self.tariff, tier=P),
            R("/v1/billing/receipts/{account}", self.receipts, tier=P, query=(
                Q("after", False, "page on: only periods starting after this time (unix s; "
                                  "an answer's `next`)"),
                Q("limit", False, f"receipts in the answer, 1 to {RECEIPTS[1]} (default "
                                  f"{RECEIPTS[0]})"))),
        ]

    def tariff(self, req: H.Request) -> dict[str, Any]:
        """Every version of the tariff in version order, each with its proposal (`tx`) and,
        once approved, the regulator's approval; 404 for a name never proposed."""
        name = req.params["name"]
        if not 1 <= len(name.encode()) <= BL.NAME_MAX:
            raise bad(f"a tariff name is 1 to {BL.NAME_MAX} bytes")
        rows = self.ledger.app_records(TF.T_TARIFF, name.encode() + b"\x00", None, VERSIONS)
        if not rows:
            raise H.HTTPError(404, "not_found", f"no tariff {name!r} was proposed")
        return {"name": name, "versions": [tariff_json(dict(r)) for _, r in rows]}

    def receipts(self, req: H.Request) -> dict[str, Any]:
        """An account's bill receipts by period start: the bill's digest and total (cents),
        the tariff version, and how often it was corrected (`n`)."""
        account = party_id(req.params["account"], "account", "an account, ")
        limit = bounded(req.query, "limit", RECEIPTS)
        start = req.query.get("after")
        after = None if start is None else account + G.u64(number(start, "after", 0,
                                                                  TIME_MAX))
        rows = self.ledger.app_records(TF.T_RECEIPT, account, after, limit)
        out = [{"start": int.from_bytes(k[8:], "big"), **to_json(dict(r))} for k, r in rows]
        return {"account": account.hex(), "receipts": out,
                "next": str(out[-1]["start"]) if len(out) == limit else None}
