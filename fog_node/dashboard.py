"""The fog API's read endpoints for the dashboard (issue 16): meters, rejections, feeders,
alerts, VEE, one meter's curve, checkpoints with their anchors, the RS485 bus, and a
reading's proof bundle. fog_node.api includes these routes (`Dashboard.routes`).

Each answer comes from a few keyed SQLite queries over the request's snapshot
(fog_node.reads; the SQL is fog_node.dashboard_queries) or from the node's in-memory
counters, never under the ingest lock; every list is bounded by `limit` (a documented
range) and pages with a cursor the answer names (`next_after`, `next_before`, ...). A bad
query value is a 400 in the fog's envelope ({"error": what was wrong}).

Tiers (meterledger.infra.http_auth): what names a household meter is the auditor's
(meters, rejections, alerts, VEE, a meter's curve, the bus, bundles); feeder aggregates and
checkpoints are public, as they leave the fog anyway (the aggregates' privacy rule merges
or suppresses small feeders before they are cooked). docs/PROTOCOL.md section 12 has every
answer's shape.

GET /v1/bundle answers exactly what `python -m tools.audit bundle` writes
(meterledger.clients.bundle.build_bundle): the fog's part through this API in process (the
caller's own token, so the auditor tier's), the chain's from the dispatch chain the node
anchors to (its chain link's client: URL and CA as configured).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from fog_node import dashboard_queries as Q
from fog_node.node import FogError, FogNode
from fog_node.reads import Reads
from fog_node.transport.rs485.master import BusMaster
from meterledger.clients.bundle import NotAnchored, build_bundle
from meterledger.clients.chain import ChainClient, ChainClientError, ChainUnavailable
from meterledger.clients.fog import FogClient
from meterledger.infra import http as H
from meterledger.infra.http import AUDITOR, PUBLIC
from meterledger.infra.http_auth import bearer

_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only, and within SQLite's signed 64 bits
_DEV = re.compile(r"[0-9a-fA-F]{16}")
INT64_MAX = 2**63 - 1
# the documented ranges of the `limit` parameters (and their defaults)
INTERVALS_MAX = 2880  # 30 days of 15-minute intervals, 2 of 1-minute ones
METERS_MAX = 5000
EVENTS_MAX = 1000
STATES = ("active", "revoked", "pending")
_DEV_DOC = "the meter's 8-byte id, 16 hex characters"

Handle = Callable[[str, str | None], tuple[int, str, bytes]]


class DashboardError(FogError, H.HTTPError):
    """A request a dashboard endpoint answers with an error status (the fog's envelope)."""

    def __init__(self, status: int, message: str) -> None:
        H.HTTPError.__init__(self, status, message)


def _bad(message: str) -> DashboardError:
    return DashboardError(400, message)


def _int(q: H.Query, name: str, lo: int = 0, hi: int = INT64_MAX,
         default: int | None = None) -> int | None:
    """Parameter `name` as a decimal integer in [lo, hi]; `default` when absent."""
    text = q.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not lo <= int(text) <= hi:
        raise _bad(f"{name} must be a decimal integer from {lo} to {hi}, not {H.show(text)}")
    return int(text)


def _limit(q: H.Query, default: int, hi: int) -> int:
    n = _int(q, "limit", 1, hi, default)
    assert n is not None
    return n


def _dev(q: H.Query, name: str = "dev", required: bool = True) -> bytes | None:
    text = q.get(name)
    if text is None:
        if required:
            raise _bad(f"missing parameter {name} ({_DEV_DOC})")
        return None
    if not _DEV.fullmatch(text):
        raise _bad(f"{name} must be 16 hex characters (the meter's 8-byte id), not "
                   f"{H.show(text)}")
    return bytes.fromhex(text)


class InProcessFog(FogClient):
    """A FogClient whose requests the API answers in process (`FogAPI.handle`), with the
    given bearer token: no socket, the same routing, tiers and answers."""

    def __init__(self, handle: Handle, token: str | None) -> None:
        super().__init__("http://in-process", token=token)
        self._handle = handle

    def _call(self, path: str, body: bytes | None = None,
              content_type: str = "application/cbor") -> tuple[int, dict[str, Any]]:
        if body is not None:
            raise ChainClientError(f"POST {path}: the in-process client only reads")
        status, _, text = self._handle(path, self.token)
        out = json.loads(text)
        if status >= 500 or not isinstance(out, dict):  # the fog's own failure, not a refusal
            raise DashboardError(503 if status == 503 else 500,
                                 f"GET {path} in process: HTTP {status}")
        return status, out


def chain_client(node: FogNode) -> ChainClient | None:
    """The client of the dispatch chain the node anchors to: its chain link's (the URL and
    CA it was configured with), else one made from the config; None without chain_url."""
    client = getattr(node.chain, "client", None)
    if isinstance(client, ChainClient):
        return client
    c = node.config
    if not c.chain_url:
        return None
    return ChainClient(c.chain_url, ca_file=c.chain_ca_file or None)


class Dashboard:
    """The handlers; `reads` gives the API's current read pool, `handle` answers a GET in
    process (FogAPI.handle), `clock` is the node's."""

    def __init__(self, node: FogNode, reads: Callable[[], Reads], handle: Handle,
                 clock: Callable[[], float]) -> None:
        self.node = node
        self.reads = reads
        self.handle = handle
        self.clock = clock

    def routes(self) -> list[H.Route]:
        R, P = H.Route, H.Param
        limit = f"how many intervals, 1 to {INTERVALS_MAX} (default 96: a day of 15 minutes)"
        after = ("only intervals ending after this Unix time (an interval's start includes "
                 "it; the answer's next_after continues); default: the newest ones")
        events = f"how many of each list, 1 to {EVENTS_MAX} (default 100)"
        return [
            R("/v1/meters", self._meters, tier=AUDITOR,
              query=(P("after", False, "only meters whose id sorts after this one (16 hex; "
                                       "the answer's next_after continues)"),
                     P("limit", False, f"how many meters, 1 to {METERS_MAX} (default 1000)"),
                     P("state", False, "only meters in this state: active, revoked or "
                                       "pending"))),
            R("/v1/rejections", self._rejections, tier=AUDITOR,
              query=(P("intervals", False, f"how many 15-minute bins the series holds, 1 to "
                                           f"{INTERVALS_MAX} (default 96)"),)),
            R("/v1/feeders", self._feeders, tier=PUBLIC,
              query=(P("feeder", False, "only this feeder (its name, as the answer gives "
                                        "it; 1 to 64 characters)"),
                     P("after", False, after), P("limit", False, limit))),
            R("/v1/alerts", self._alerts, tier=AUDITOR,
              query=(P("limit", False, events),
                     P("before", False, "only alerts with an id below this (next_before)"),
                     P("faults_before", False, "only faults with an id below this "
                                               "(next_faults_before)"))),
            R("/v1/vee", self._vee, tier=AUDITOR,
              query=(P("dev", False, "only this meter's (" + _DEV_DOC + ")"),
                     P("limit", False, events),
                     P("before", False, "only findings with an id below this (next_before)"),
                     P("estimates_before", False, "only estimates logged below this log "
                                                  "index (next_estimates_before)"))),
            R("/v1/curve", self._curve, tier=AUDITOR,
              query=(P("dev", True, _DEV_DOC), P("after", False, after),
                     P("limit", False, limit))),
            R("/v1/checkpoints", self._checkpoints, tier=PUBLIC,
              query=(P("before", False, "only checkpoints below this height (next_before)"),
                     P("limit", False, f"how many checkpoints, 1 to {EVENTS_MAX} (default "
                                       "100)"))),
            R("/v1/bus", self._bus, tier=AUDITOR),
            R("/v1/bundle", self._bundle, tier=AUDITOR,
              query=(P("dev", True, _DEV_DOC), P("seq", True, "the reading's seq (>= 1)"))),
        ]

    # -- the endpoints ---------------------------------------------------------------------
    def _meters(self, req: H.Request) -> dict[str, Any]:
        """Every meter with its state, last reading, last birth and rejections; totals.

        Enrolled and revoked meters from the registry, and pending ones (births seen, not
        enrolled, as GET /v1/devices lists them), in id order: state, last seq and reading
        time, last_seen (its newest reading's t or its last birth's arrival, whichever is
        later), what its last birth said (firmware, boot counter, the spool's backlog then),
        its rejected messages; totals per state over all meters.
        """
        q = req.query
        after = _dev(q, "after", required=False)
        limit = _limit(q, 1000, METERS_MAX)
        state = q.get("state")
        if state is not None and state not in STATES:
            raise _bad(f"state must be active, revoked or pending, not {H.show(state)}")
        ingest = self.node.ingest
        # C-level copies, atomic under the GIL: the ingest thread's dicts need no lock
        pending, seen = ingest.pending_births.copy(), ingest.pending_seen.copy()
        with self.reads().snapshot() as s:
            return Q.meters(s, pending, seen, after, limit, state)

    def _rejections(self, req: H.Request) -> dict[str, Any]:
        """Rejected messages: counts by reason with the last example, and a time series.

        Kept durably (fog_node.rejections.RejectionRecord): each reason's count, first and
        last time, the last one's meter, detail and bytes (hex); the counts of the last
        `intervals` 15-minute bins of the node's clock, oldest first; what the bounds
        dropped.
        """
        n = _int(req.query, "intervals", 1, INTERVALS_MAX, 96)
        assert n is not None
        with self.reads().snapshot() as s:
            return Q.rejections(s, n, int(self.clock()))

    def _feeders(self, req: H.Request) -> dict[str, Any]:
        """Each feeder's import, export and loss per interval (its type-11 aggregates).

        The latest revision of each feeder's (or one feeder's) aggregate of each interval
        of the page: Wh
        imported, exported, the loss (with a head meter), how many meters were measured or
        estimated (includes_estimates), voltages and alerts.
        """
        q = req.query
        feeder = q.get("feeder")
        if feeder is not None and not 1 <= len(feeder) <= 64:
            raise _bad(f"feeder must be a feeder's name, 1 to 64 characters, not "
                       f"{H.show(feeder)}")
        after = _int(q, "after")
        limit = _limit(q, 96, INTERVALS_MAX)
        with self.reads().snapshot() as s:
            return Q.feeders(s, feeder, after, limit)

    def _alerts(self, req: H.Request) -> dict[str, Any]:
        """Feeder faults (outage, voltage, tamper, loss) and the registry's alerts.

        Faults from the interval they were found in to the last one that showed them (end
        null while open), newest first; the registry's alerts (equivocation, broken hash
        chains, VEE errors, storage faults, faults as raised), newest first.
        """
        q = req.query
        limit = _limit(q, 100, EVENTS_MAX)
        before, faults_before = _int(q, "before"), _int(q, "faults_before")
        with self.reads().snapshot() as s:
            return Q.alerts(s, limit, before, faults_before)

    def _vee(self, req: H.Request) -> dict[str, Any]:
        """VEE findings and estimates, newest first, of all meters or one.

        Findings: every validation rule that fired on a reading (info, warning or error;
        docs/VEE.md), with the reading's seq and interval end. Estimates: the fog's type-10
        entries with their intervals and Wh, and the supersession that retired them.
        """
        q = req.query
        dev = _dev(q, required=False)
        limit = _limit(q, 100, EVENTS_MAX)
        before, est_before = _int(q, "before"), _int(q, "estimates_before")
        with self.reads().snapshot() as s:
            return Q.vee_page(s, dev, limit, before, est_before)

    def _curve(self, req: H.Request) -> dict[str, Any]:
        """One meter's import and export Wh per interval, estimated intervals marked.

        Measured between two consecutive readings, else from a live estimate (estimated:
        true, with its method); intervals the fog knows nothing of are absent. 404 for a
        meter the fog never enrolled.
        """
        q = req.query
        dev = _dev(q)
        assert dev is not None
        after = _int(q, "after")
        limit = _limit(q, 96, INTERVALS_MAX)
        with self.reads().snapshot() as s:
            if s.registry.device(dev) is None:
                raise DashboardError(404, f"meter {dev.hex()} is not enrolled in this fog")
            return Q.curve(s, dev, after, limit)

    def _checkpoints(self, req: H.Request) -> dict[str, Any]:
        """Checkpoints, newest first, each with the anchor that carried it to the chain.

        The anchor as the chain link's outbox knows it: its transaction's digest and
        nonce, state (queued, landed, refused), the block height and index it landed at,
        when it was made and when it landed (the node's clock); null when no anchor carries
        the checkpoint yet, or the node does not anchor (anchored_height null).
        """
        q = req.query
        before = _int(q, "before")
        limit = _limit(q, 100, EVENTS_MAX)
        with self.reads().snapshot() as s:
            return Q.checkpoints(s, before, limit)

    def _bus(self, req: H.Request) -> dict[str, Any]:
        """The RS485 bus: its counters and each address's meter and state.

        {"bus": null} when the node is master of no bus. The counters are the bus's
        totals (/metrics rs485_*); per address: the meter its birth named, and whether it
        answers ("answering"), times out ("silent": missed_visits, the visits in a row whose
        request got no answer, retry included, and for how long, in seconds) or has not
        given its birth yet ("unknown"). The master counts per bus, not per address.
        """
        bus = self.node.rs485
        if not isinstance(bus, BusMaster):
            return {"bus": None}
        # copies of what the bus thread changes (C-level, atomic under the GIL)
        counters = dict(bus.counters.copy())
        silent = bus.silences._silent.copy()  # address -> [since, said_at, timeouts]
        now = bus.silences.monotonic()
        addresses = []
        for slot in list(bus.slots):
            s = silent.get(slot.address)
            state = "silent" if s is not None else (
                "unknown" if slot.dev is None else "answering")
            addresses.append({"address": slot.address,
                              "dev": slot.dev.hex() if slot.dev is not None else None,
                              "state": state, "missed_visits": int(s[2]) if s else 0,
                              "silent_s": round(now - s[0], 3) if s else None})
        return {"bus": {"port": bus.url, "baud": bus.baud, "counters": counters,
                        "addresses": addresses}}

    def _bundle(self, req: H.Request) -> dict[str, Any]:
        """The proof bundle of one reading, as `python -m tools.audit bundle` writes it.

        Verifies offline with `python -m tools.audit verify` (SPEC section 9). 404 while the
        reading is not logged or no anchor on the chain covers it yet, or when the node
        anchors to no chain (chain_url empty); 503 when the chain does not answer.
        """
        q = req.query
        dev = _dev(q)
        assert dev is not None
        seq = _int(q, "seq", 1)
        if seq is None:
            raise _bad("missing parameter seq (the reading's seq, >= 1)")
        chain = chain_client(self.node)
        if chain is None:
            raise DashboardError(404, "this fog anchors to no dispatch chain (chain_url is "
                                      "empty): a reading's proof bundle needs its anchor")
        fog = InProcessFog(self.handle, bearer(req.headers))
        try:
            return build_bundle(fog, chain, dev, seq)
        except NotAnchored as e:
            raise DashboardError(404, str(e)) from None
        except ChainUnavailable as e:
            raise DashboardError(503, f"the dispatch chain does not answer: {e}") from None
        except ChainClientError as e:  # the fog's own 404s: not logged, not yet covered
            raise DashboardError(404, str(e).split(": ", 2)[-1]) from None
