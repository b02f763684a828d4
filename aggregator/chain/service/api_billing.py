"""The chain API's reads of tariffs and bill receipts (docs/PROTOCOL.md section 28): every
version of a tariff with its two signatures' transactions, an account's receipts (the
bills' digests and totals, never their intervals), and a meter's closed outage records (for
outage compensation). GET; bytes as hex; public, like the blocks they are derived from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.app import outages as O
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
CREDITS = 10_000  # a meter's outage credits in one answer (one a day is 27 years)
REDEMPTIONS = 1_000  # an account's redemptions in one answer (a bill's period's at most)
OUTAGES = 1000  # a meter's outage records in one answer, at most
_PAGE = 1000  # records read from the store at a time while looking for them


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
            R("/v1/billing/outages/{meter}", self.outages, tier=P, query=(
                Q("from", False, "only outages ending after this time (unix s; default 0)"),
                Q("to", False, f"only outages starting before this time (unix s; default "
                               f"{TIME_MAX})"))),
            R("/v1/billing/credits/{meter}", self.credits, tier=P),
            R("/v1/billing/redemptions/{account}", self.redemptions, tier=P, query=(
                Q("from", False, "only redemptions at or after this chain time (unix s; "
                                 "default 0)"),
                Q("to", False, f"only redemptions before this chain time (unix s; default "
                               f"{TIME_MAX})"))),
        ]

    def redemptions(self, req: H.Request) -> dict[str, Any]:
        """Points redeemed against an account's bills (bl_redeem) by chain time in
        [from, to): who redeemed, the transaction, the tariff, the upt and the cents."""
        account = party_id(req.params["account"], "account", "an account, ")
        lo = number(req.query.get("from") or "0", "from", 0, TIME_MAX)
        hi = number(req.query.get("to") or str(TIME_MAX), "to", 0, TIME_MAX)
        if lo >= hi:
            raise bad(f"from ({lo}) must be before to ({hi}): the range is [from, to)")
        rows = self.ledger.app_records(TF.T_REDEEM, account, account + G.u64(lo) if lo else
                                       None, REDEMPTIONS + 1)
        out = [to_json(dict(r)) for k, r in rows if lo <= int.from_bytes(k[8:16], "big") < hi]
        return {"account": account.hex(), "redemptions": out[:REDEMPTIONS],
                "truncated": len(out) > REDEMPTIONS}

    def credits(self, req: H.Request) -> dict[str, Any]:
        """A meter's outage credits (bl_credit), by their outage record's digest: the
        utility's transaction, the outage, the tariff, the Wh not served and the cents."""
        meter = party_id(req.params["meter"], "meter", "a meter, ")
        rows = self.ledger.app_records(TF.T_CREDIT, meter, None, CREDITS)
        return {"meter": meter.hex(), "credits": [
            {"fault": k[8:].hex(), **to_json(dict(r))} for k, r in rows]}

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

    def outages(self, req: H.Request) -> dict[str, Any]:
        """A meter's closed outage records overlapping [from, to), by start: the fault
        transaction that reported it (`fault`), the fog, start and end (unix s). At most
        OUTAGES of them, the earliest; `truncated` says there were more (ask again from a
        later `from`)."""
        meter = party_id(req.params["meter"], "meter", "a meter id, ")
        lo = number(req.query.get("from") or "0", "from", 0, TIME_MAX)
        hi = number(req.query.get("to") or str(TIME_MAX), "to", 0, TIME_MAX)
        if lo >= hi:
            raise bad(f"from ({lo}) must be before to ({hi}): the range is [from, to)")
        found = O.select(self._outage_rows(meter), lo, hi, OUTAGES + 1)
        out = [{"fault": r["tx"].hex(), "fog": r["fog"].hex(), "start": r["start"],
                "end": r["end"]} for r in found[:OUTAGES]]
        return {"meter": meter.hex(), "outages": out, "truncated": len(found) > OUTAGES}

    def _outage_rows(self, meter: bytes) -> Iterator[tuple[bytes, Any]]:
        """A meter's outage records in key order (by start), read a page at a time, so a
        reader that stops early reads no more."""
        after: bytes | None = None
        while True:
            rows = self.ledger.app_records(O.T_OUTAGE, meter, after, _PAGE)
            yield from rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]
