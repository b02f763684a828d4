"""The chain API's read of a device's traceability record (docs/PROTOCOL.md section 29): its
registration and state, and its timeline, every record naming the transaction that made it
(whose inclusion proof `GET /v1/tx/{digest}` gives). GET; bytes as hex; public, like the
blocks it is derived from."""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.ledger import Ledger
from aggregator.chain.service.api_reads import bounded, number, party_id
from meterledger.infra import http as H
from meterledger.wire.decoded import BODY_NAMES
from meterledger.wire.names import to_json
from meterledger.wire.schema import COUNT_MAX

EVENTS = (100, 500)  # timeline records per answer (default, most)


def event_json(n: int, ev: dict[str, Any]) -> dict[str, Any]:
    """One timeline record: its number, kind, transaction, sender (`by`), the chain's time
    when accepted (`at`), its body by name (a determination's also `evidence`)."""
    names = BODY_NAMES.get(ev["kind"], {})
    body = {names.get(k, str(k)): v for k, v in sorted(ev["body"].items())}
    return {"n": n, **to_json({k: v for k, v in ev.items() if k != "body"}),
            "body": to_json(body)}


class TraceReads:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[H.Route]:
        R, Q = H.Route, H.Param
        return [
            R("/v1/devices/{dev}/timeline", self.timeline, tier=H.PUBLIC, query=(
                Q("after", False, "page on: only records numbered above this one (an "
                                  "answer's `next`)"),
                Q("limit", False, f"records in the answer, 1 to {EVENTS[1]} (default "
                                  f"{EVENTS[0]})"))),
        ]

    def timeline(self, req: H.Request) -> dict[str, Any]:
        """A device's registration and state (`device`) and its timeline in chain order:
        every record with its transaction's digest; 404 for a device never registered."""
        dev = party_id(req.params["dev"], "dev", "a device id, ")
        limit = bounded(req.query, "limit", EVENTS)
        text = req.query.get("after")
        after = 0 if text is None else number(text, "after", 0, COUNT_MAX)
        rec = self.ledger.app_record(DVS.T_DEVICE, dev)
        if rec is None:
            raise H.HTTPError(404, "not_found", f"no device {dev.hex()} is registered")
        rows = self.ledger.app_records(DVS.T_EVENT, dev, dev + G.u64(after), limit)
        out = [event_json(int.from_bytes(k[8:], "big"), dict(ev)) for k, ev in rows]
        return {"dev": dev.hex(), "device": to_json(dict(rec)), "timeline": out,
                "next": str(out[-1]["n"]) if len(out) == limit and out[-1]["n"] < rec["n"]
                else None}
