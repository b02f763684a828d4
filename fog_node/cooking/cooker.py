"""The fog's cooked data: VEE on every logged reading, type-10 estimates for missing and failed
intervals, type-11 feeder aggregates at every interval close (docs/VEE.md, docs/PROTOCOL.md
section 18) and type-14 energy statements of the generator meters (section 25).

The log is the source of truth; the Cooker keeps an index of it (cooked.db) and follows it
with a cursor, so readings arriving over MQTT and RS485 and its own entries are seen the
same way, and a restart resumes where the index stopped. Each `tick` (the service's seal
timer) indexes what was logged since, validates new readings, and logs what the new data
calls for: supersessions of estimates a true reading made obsolete, new estimates (exact
register differences split over the gap), revisions of aggregates of intervals closed
already, and the statements late data made due. `close(ivl)` logs the aggregates of one interval and returns the digest the
checkpoint's `agg` carries, after the generators' statements of it (statements.py).
Nothing logged is ever changed: corrections are new entries.

Each close also follows the feeders' open outages; an outage that ended becomes closed
outage records in cooked.db (outages.py), which the fault reporter takes with
`pending_outages` and marks with `outage_reported` once their `fault` transactions are in
the chain outbox (fog_node.chainlink.faults).
"""

from __future__ import annotations

from collections.abc import Callable

from fog_node.cooking import outages as OT
from fog_node.cooking.index import AGGREGATES_PER_CHECKPOINT, Closed, CookConfig
from fog_node.cooking.statements import Statements
from meterledger.infra.sqlite import atomic

__all__ = ["AGGREGATES_PER_CHECKPOINT", "Closed", "CookConfig", "Cooker"]


class Cooker(Statements):
    """The cooked data of one fog: the index (index.py), estimates (estimates.py),
    aggregates (aggregates.py) and statements (statements.py), run by the scheduler through
    `tick` and `close`."""

    def tick(self, now: int, seal: Callable[[], object] | None = None) -> list[bytes]:
        """Index, estimate and revise; returns the entries logged. `seal` is called between
        chunks of aggregates and statements (see AGGREGATES_PER_CHECKPOINT)."""
        self.catch_up(now)
        return self.estimate(now) + self.revise(now, seal)

    # -- closed outage records (outages.py), for the fault reporter --------------------------
    def pending_outages(self, limit: int) -> list[OT.OutageRecord]:
        """The oldest closed outage records whose transactions are not queued yet."""
        return OT.pending(self.db, limit)

    def outage_reported(self, rid: int, state: str) -> None:
        """Record `rid` is in the chain outbox (OT.QUEUED) or would be refused (OT.DROPPED)."""
        with atomic(self.db):
            OT.reported(self.db, rid, state)

    def open_outages(self) -> list[OT.OpenOutage]:
        """The feeders' outages still open, with their meters down so far."""
        return OT.open_outages(self.db)

    def outage_records(self, feeder: str | None = None) -> list[OT.OutageRecord]:
        """The closed outage records kept (of one feeder), oldest first."""
        return OT.records(self.db, feeder)
