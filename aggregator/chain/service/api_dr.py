"""The chain API's reads of home demand response (docs/PROTOCOL.md section 30): a customer's
contracts with their preferences, the accepted contracts of a fog's meters (what the fog
carries out), the DR events (of one fog), and an event's reports with the compensation
paid. GET; bytes as hex; public, like the blocks they are derived from.

Privacy: a report names a meter and its event totals (baseline, measured and curtailed Wh
over the event's window), never its intervals: what the compensation rests on, public so
the customer, the utility and the regulator check the same payment, and no more of the
household's profile than an outage credit shows (section 28)."""

from __future__ import annotations

import re
from typing import Any

from aggregator.chain.app import dr as D
from aggregator.chain.app import green as G
from aggregator.chain.ledger import Ledger
from aggregator.chain.service.api_reads import bad, bounded, party_id
from aggregator.chain.store.base import header_time
from meterledger.infra import http as H
from meterledger.wire.names import to_json
from meterledger.wire.schema import TIME_MAX

CONTRACTS = 1000  # a customer's contracts in one answer (the first, by offer digest)
FOG_CONTRACTS = (100, 500)  # a fog's contracts per page (default, most)
EVENTS = (100, 1000)  # events per page
REPORTS = (1000, 10_000)  # an event's reports per page
_CURSOR = re.compile(r"([0-9]{1,10})(?::([0-9a-f]+))?")


def cursor(q: H.Query, width: int) -> bytes | None:
    """`after` as a key: "T" (everything ending after unix time T) or "T:ID" (an answer's
    `next`: after that item of time T; ID is `width` bytes as hex)."""
    text = q.get("after")
    if text is None:
        return None
    m = _CURSOR.fullmatch(text)
    if m is None or int(m.group(1)) > TIME_MAX or (
            m.group(2) is not None and len(m.group(2)) != 2 * width):
        raise bad(f"after is T (unix s) or T:ID (an answer's next, ID {2 * width} hex "
                  f"characters), not {text[:80]!r}")
    t = G.u64(int(m.group(1)))
    return t + (bytes.fromhex(m.group(2)) if m.group(2) else b"\xff" * width)


def _next(rows: list[tuple[bytes, Any]], limit: int, width: int) -> str | None:
    """The page's last key as T:ID when the page is full (there may be more)."""
    if len(rows) < limit:
        return None
    key = rows[-1][0][-(8 + width):]
    return f"{int.from_bytes(key[:8], 'big')}:{key[8:].hex()}"


def event_json(eid: bytes, rec: dict[str, Any]) -> dict[str, Any]:
    return {"event": eid.hex(), **to_json(rec)}


class DemandResponseReads:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[H.Route]:
        R, Q, P = H.Route, H.Param, H.PUBLIC
        after = ("page on: only those ending after this time (unix s), or an answer's "
                 "`next`")
        return [
            R("/v1/dr/contracts/{customer}", self.contracts, tier=P),
            R("/v1/dr/fogs/{fog}/contracts", self.fog_contracts, tier=P, query=(
                Q("after", False, "page on: only contracts valid after this time (unix s), "
                                  "or an answer's `next`"),
                Q("limit", False, f"contracts in the answer, 1 to {FOG_CONTRACTS[1]} "
                                  f"(default {FOG_CONTRACTS[0]})"))),
            R("/v1/dr/events", self.events, tier=P, query=(
                Q("fog", False, "only the events naming this fog (16 hex characters)"),
                Q("after", False, after),
                Q("limit", False, f"events in the answer, 1 to {EVENTS[1]} (default "
                                  f"{EVENTS[0]})"))),
            R("/v1/dr/reports/{event}", self.reports, tier=P, query=(
                Q("after", False, "page on: only meters above this one (16 hex characters)"),
                Q("limit", False, f"reports in the answer, 1 to {REPORTS[1]} (default "
                                  f"{REPORTS[0]})"))),
        ]

    def _contract(self, offer: bytes) -> dict[str, Any]:
        """A contract (its offer and, once accepted, the acceptance) with its
        preferences."""
        rec = dict(self.ledger.app_record(D.T_OFFER, offer))
        prefs = self.ledger.app_records(D.T_PREF, offer, None, D.PREFS_MAX)
        return {"contract": offer.hex(), **to_json(rec), "accept": to_json(rec.get("accept")),
                "accepted": rec.get("accepted"), "prefs": [to_json(dict(r)) for _, r in prefs]}

    def contracts(self, req: H.Request) -> dict[str, Any]:
        """A customer's contracts, offered or accepted (`accepted`: the chain time of the
        acceptance, null while only offered), each with its preferences; the first
        CONTRACTS by offer digest (`truncated` says there were more)."""
        customer = party_id(req.params["customer"], "customer", "a participant id, ")
        rows = self.ledger.app_records(D.T_CUSTOMER, customer, None, CONTRACTS + 1)
        return {"customer": customer.hex(),
                "contracts": [self._contract(k[8:]) for k, _ in rows[:CONTRACTS]],
                "truncated": len(rows) > CONTRACTS}

    def fog_contracts(self, req: H.Request) -> dict[str, Any]:
        """The accepted contracts of the fog's meters valid after `after`, by the end of
        their validity: what the fog applies the if-then rule to."""
        fog = party_id(req.params["fog"], "fog", "a fog id, ")
        limit = bounded(req.query, "limit", FOG_CONTRACTS)
        after = cursor(req.query, 32)
        rows = self.ledger.app_records(D.T_FOGC, fog, None if after is None else fog + after,
                                       limit)
        return {"fog": fog.hex(), "now": self.now(),
                "contracts": [self._contract(k[16:]) for k, _ in rows],
                "next": _next(rows, limit, 32)}

    def now(self) -> int:
        """The chain's time: the newest block's (what the next transaction's rules read)."""
        return header_time(self.ledger.head().header)

    def events(self, req: H.Request) -> dict[str, Any]:
        """DR events by their end (those naming `fog`, or all), with `now`, the chain's
        time: a fog reports an event once `now` has passed its end."""
        fog_hex = req.query.get("fog")
        fog = None if fog_hex is None else party_id(fog_hex, "fog", "a fog id, ")
        limit = bounded(req.query, "limit", EVENTS)
        after = cursor(req.query, 8)
        table, prefix = (D.T_ENDS, b"") if fog is None else (D.T_FOGEV, fog)
        rows = self.ledger.app_records(table, prefix, None if after is None else
                                       prefix + after, limit)
        events = [event_json(k[-8:], dict(self.ledger.app_record(D.T_EVENT, k[-8:])))
                  for k, _ in rows]
        return {"fog": fog_hex, "now": self.now(), "events": events,
                "next": _next(rows, limit, 8)}

    def reports(self, req: H.Request) -> dict[str, Any]:
        """An event and its reports by meter: what the fog did, the baseline, measured and
        curtailed Wh, why a meter was not paid, and the points due, paid and still owed;
        404 for an event that is not on the chain."""
        eid = party_id(req.params["event"], "event", "an event id, ")
        ev = self.ledger.app_record(D.T_EVENT, eid)
        if ev is None:
            raise H.HTTPError(404, "not_found", f"no DR event {eid.hex()}")
        limit = bounded(req.query, "limit", REPORTS)
        start = req.query.get("after")
        after = None if start is None else eid + party_id(start, "after", "a meter id, ")
        rows = self.ledger.app_records(D.T_REPORT, eid, after, limit)
        out = [{"meter": k[8:].hex(), **to_json(dict(r))} for k, r in rows]
        return {"event": event_json(eid, dict(ev)), "reports": out,
                "next": out[-1]["meter"] if len(out) == limit else None}

