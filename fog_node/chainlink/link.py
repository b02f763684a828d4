"""Anchoring the side-chain to the dispatch chain, and picking up dispatch instructions.

Every transaction the fog sends (anchors, reports, faults) goes through one persistent
outbox in `chain.db`, in nonce order: a transaction is signed and stored before it
is ever sent, and is resent with the same bytes until the chain answers with a receipt. So
an aggregator outage delays anchors but never loses them; a fog restart resumes the outbox;
and because a resend is the identical transaction, the chain's `duplicate` answer (the
receipt of the copy it already holds) makes delivery exactly-once.

Anchors are planned from the last *queued* anchor, not the last landed one, so anchors
built during an outage chain onto each other and land in order when the chain is back.
An anchor is due when a checkpoint closing an interval waits (at least one per interval
close) or when `period_s` passed since the last one (at most one per period otherwise).

A registry chain (fog_node.chainlink.links) has a ChainLink of its own on another outbox
database (`outbox`) with `instructions` off: it learns that chain's nonce and last anchored
checkpoint at its first contact and anchors from there, so each chain gets every checkpoint,
aggregate and statement once, whatever the others got.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from fog_node.log.checkpoints import Checkpoint
from fog_node.log.store import LogStore
from fog_node.node import FogNode
from meterledger import errors
from meterledger import wire as P
from meterledger.clients.chain import ChainClient, ChainClientError, ChainRefused, ChainUnavailable
from meterledger.infra.sqlite import atomic, connect, meta, set_meta
from meterledger.wire import anchor as A
from meterledger.wire import chain as C

log = logging.getLogger("fog_node.chainlink.link")
REPORT_S = 600.0  # real seconds between "landed" summaries in the log
OUTBOX = "chain.db"  # the dispatch chain's outbox (and the dispatcher's state) in data_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    nonce INTEGER PRIMARY KEY, kind TEXT NOT NULL, digest BLOB NOT NULL UNIQUE, tx BLOB NOT NULL,
    first INTEGER, last INTEGER, created INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', height INTEGER, idx INTEGER, reason TEXT);
CREATE TABLE IF NOT EXISTS instructions (
    digest BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL, tx BLOB NOT NULL,
    received INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'received');
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v);
CREATE INDEX IF NOT EXISTS outbox_anchors ON outbox (kind, last);
"""
# when a transaction landed (the node's clock), for the dashboard's checkpoints and anchors
# (fog_node.dashboard); an outbox made before it gets the column, NULL for what landed then
_LANDED = "ALTER TABLE outbox ADD COLUMN landed INTEGER"


class AnchorError(errors.MeterLedgerError, RuntimeError):
    """The fog's view and the chain's disagree in a way a retry cannot fix."""


def build_anchor(key: P.SigningKey, chain: bytes, nonce: int, head: Checkpoint | None,
                 cps: list[Checkpoint], log: LogStore, now: int,
                 aggregates: Callable[[int, int], list[bytes]] | None = None,
                 known_aggregate: Callable[[bytes], bool] | None = None,
                 statements: Callable[[int, int], list[bytes]] | None = None,
                 ) -> tuple[bytes, int]:
    """The anchor transaction carrying the most of cps (oldest first, continuing `head`, the
    last anchored checkpoint) that fits a 4096-byte message, and how many it carries.

    `aggregates(lo, hi)` gives the type-11 entries at log indices lo <= i < hi: an anchor
    carries those its checkpoints cover and the previous anchor's did not, so every
    aggregate travels to the chain exactly once, with the first checkpoint that covers it.
    `statements(lo, hi)` gives the type-14 energy statements there, carried the same way.
    Checked here exactly as the chain will check it (`known_aggregate`: carried by an
    earlier anchor), so a bug shows up at the fog."""
    best: tuple[bytes, int] | None = None
    base = head.size if head else 0
    for n in range(1, len(cps) + 1):
        proof = log.consistency_proof(base, cps[n - 1].size)
        aggs = aggregates(base, cps[n - 1].size) if aggregates is not None else []
        stmts = statements(base, cps[n - 1].size) if statements is not None else []
        body = C.anchor_body([c.msg for c in cps[:n]], proof.path, aggs, stmts)
        raw = P.sign1(key, C.tx(key.id, nonce, C.ANCHOR, body, now, chain), check=False)
        if len(raw) > P.MAX_MESSAGE:
            break
        best = (raw, n)
    if best is None:
        raise AnchorError(f"checkpoint {cps[0].height} alone does not fit an anchor")
    raw, n = best
    A.check_anchor(P.parse(raw).fields[4], key.public_key,
                   A.AnchoredHead.of(P.parse(head.msg)) if head else None,
                   known_aggregate or (lambda d: False))
    return raw, n


def steps(*fns: Callable[[], None]) -> Callable[[], None]:
    """One `ChainLink.on_step` made of several round modules (demand response, the device
    reports of fog_node.chainlink.devices), run in order; each one's failure is logged and
    the next still runs, so a bug in one module stops neither the others nor anchoring."""
    def run() -> None:
        for fn in fns:
            try:
                fn()
            except Exception:  # logged with the module's name; the round goes on
                log.exception("round module %s failed", getattr(fn, "__qualname__", fn))
    return run


class ChainLink:
    """One chain's link: `outbox` names its database in the data dir (OUTBOX, chain.db, for the
    dispatch chain); `instructions` False for a chain that sends none (a registry chain);
    `label` names the chain in the log."""

    def __init__(self, node: FogNode, client: ChainClient, clock: Callable[[], float],
                 period_s: float = 60.0, dispatch_pub: P.PublicKey | None = None, *,
                 outbox: str = OUTBOX, instructions: bool = True,
                 label: str = "dispatch chain") -> None:
        self.node = node
        self.client = client
        self.clock = clock
        self.period_s = period_s
        self.dispatch_pub = dispatch_pub
        self.instructions_on = instructions
        self.label = label
        # run at the start of each step (fog_node.chainlink.dr.DemandResponse.step; several
        # modules: `steps(...)`)
        self.on_step: Callable[[], None] | None = None
        self.db_path = node.config.data_dir / outbox
        self.counters: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.db = connect(self.db_path)
        self.db.executescript(_SCHEMA)
        if "landed" not in {r[1] for r in self.db.execute("PRAGMA table_info(outbox)")}:
            self.db.execute(_LANDED)
        # nonce allocation + outbox insert, by plan() here and queue_tx() from other threads
        self._tx_lock = threading.Lock()
        self._side_db: sqlite3.Connection | None = None  # queue_tx's own connection
        # what the log has said (real time: the node's clock may be simulated)
        self._down_since: float | None = None
        self._reported_at: float | None = None
        self._landed = 0

    def close(self) -> None:
        if self._side_db is not None:
            self._side_db.close()
        self.db.close()

    def _atomic(self) -> AbstractContextManager[None]:
        # autocommit connection: group statements explicitly so an outbox row and the meta
        # that goes with it are durable together or not at all
        return atomic(self.db)

    # -- small state ---------------------------------------------------------------------
    def _meta(self, k: str) -> Any:
        return meta(self.db, k)

    def _set_meta(self, k: str, v: Any) -> None:
        set_meta(self.db, k, v)

    @property
    def halted(self) -> str | None:
        """Why the outbox stopped (a refused transaction), or None."""
        v = self._meta("halted")
        return str(v) if v is not None else None

    def depth(self) -> int:
        """Transactions signed and waiting for the chain."""
        row = self.db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'queued'").fetchone()
        return int(row[0])

    def anchored_height(self) -> int:
        """Checkpoint height the chain has confirmed (landed anchors)."""
        row = self.db.execute("SELECT MAX(last) FROM outbox WHERE kind = 'anchor' AND "
                              "state = 'landed'").fetchone()
        base = self._meta("base_height") or 0
        return max(int(row[0] or 0), int(base))

    def _queued_head(self) -> int:
        row = self.db.execute("SELECT MAX(last) FROM outbox WHERE kind = 'anchor'").fetchone()
        return max(int(row[0] or 0), int(self._meta("base_height") or 0))

    def _next_nonce(self) -> int:
        row = self.db.execute("SELECT MAX(nonce) FROM outbox").fetchone()
        return max(int(row[0] or 0), int(self._meta("base_nonce") or 0)) + 1

    # -- one round -------------------------------------------------------------------------
    def step(self) -> None:
        """Sync once with the chain, queue what is due, send the outbox, fetch instructions.
        The chain being away is normal: it only delays this round's network part."""
        if self.on_step is not None:  # demand response, device reports: what they queue
            try:  # goes out with this round's flush
                self.on_step()
            except Exception:  # a bug there must not stop anchoring: log, go on
                log.exception("round module step failed (%s)", self.label)
        try:
            if self._meta("synced") is None:
                self.sync()
            self.plan()
            landed = self.flush()
            if self.instructions_on:
                self.poll_instructions()
        except ChainUnavailable as e:
            self.counters["chain_unavailable"] += 1
            if self._down_since is None:  # once per outage, not at every poll
                self._down_since = time.monotonic()
                log.warning("%s unavailable: %s; anchors wait in the outbox", self.label, e)
            return
        except AnchorError:
            return  # halted and logged; instructions are still polled next round
        if self._down_since is not None:
            log.info("%s reachable again after %.0f s", self.label,
                     time.monotonic() - self._down_since)
            self._down_since = None
        self._report_landed(landed)

    def _report_landed(self, landed: int) -> None:
        """The first transaction landed, then a summary every REPORT_S of real time (a
        simulated clock anchors many times a second)."""
        if not landed:
            return
        self._landed += landed
        now = time.monotonic()
        if self._reported_at is None or now - self._reported_at >= REPORT_S:
            (height,) = self.db.execute(
                "SELECT MAX(height) FROM outbox WHERE state = 'landed'").fetchone()
            log.info("%d transaction(s) (%s) landed on the %s%s, up to block %s", self._landed,
                     "anchors, reports, faults" if self.instructions_on else "anchors",
                     self.label,
                     "" if self._reported_at is None else f" in the last {REPORT_S:.0f} s",
                     height)
            self._reported_at, self._landed = now, 0

    def start(self, poll_s: float = 1.0) -> None:
        """Run step() every poll_s seconds on a thread until stop()."""
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(poll_s):
                try:
                    self.step()
                except Exception:  # a bug must not silently stop anchoring: log, go on
                    log.exception("chain link step failed (%s)", self.label)

        name = "chain-link" if self.db_path.name == OUTBOX else f"chain-link-{self.db_path.stem}"
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the thread to stop after its current round (stop() waits for it)."""
        self._stop.set()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(30)
            self._thread = None

    def status(self) -> dict[str, Any]:
        """The link's state for the API: its outbox, the chain's id (None before the first
        contact), the anchored height, the transactions waiting, when one last landed (the
        node's clock) and `state`: ok, halted, unavailable, or connecting (no first contact
        yet)."""
        chain = self._meta("chain")
        (landed,) = self.db.execute("SELECT MAX(landed) FROM outbox").fetchone()
        state = ("halted" if self.halted else "unavailable" if self._down_since is not None
                 else "connecting" if self._meta("synced") is None else "ok")
        return {"outbox": self.db_path.name, "chain": chain, "state": state,
                "anchored_height": self.anchored_height(), "queued": self.depth(),
                "last_landed": landed}

    def sync(self) -> None:
        """First contact: learn this fog's nonce and last anchored checkpoint from the chain,
        so a fog registered with history (or restored from a backup) continues it."""
        me = self.node.key.id.hex()
        part = self.client.participant(me)
        if part is None or part.get("role") != "fog":
            self.counters["unregistered"] += 1
            raise ChainUnavailable(f"fog {me} is not registered with role fog on the chain yet")
        anchors = self.client.anchors(me)
        height = int(anchors[-1]["last"]) if anchors else 0
        if height:
            with self.node.lock:
                cp = self.node.checkpoints.at_height(height)
            if cp is None or cp.root.hex() != anchors[-1]["root"] or cp.size != anchors[-1]["size"]:
                self._halt(f"the chain's last anchor of this fog (checkpoint {height}) is not "
                           "this node's checkpoint: wrong data dir or a rewritten log")
                raise AnchorError(self.halted)
        chain = self.client.head()["chain"]
        with self._atomic():
            self._set_meta("chain", chain)
            self._set_meta("base_nonce", int(part["nonce"]))
            self._set_meta("base_height", height)
            self._set_meta("synced", int(self.clock()))

    def _halt(self, why: str) -> None:
        self._set_meta("halted", why)
        self.counters["halted"] += 1
        log.error("anchoring to the %s halted: %s", self.label, why)

    def plan(self, force: bool = False) -> int:
        """Queue anchors for the checkpoints sealed since the last queued anchor; returns how
        many transactions were queued."""
        if self._meta("synced") is None or self.halted:
            return 0
        now = self.clock()
        head_height = self._queued_head()
        with self.node.lock:
            latest = self.node.checkpoints.latest()
            if latest is None or latest.height <= head_height:
                return 0
            waiting = [self.node.checkpoints.at_height(h)
                       for h in range(head_height + 1, latest.height + 1)]
            head = self.node.checkpoints.at_height(head_height) if head_height else None
        cps = [c for c in waiting if c is not None]
        closes_interval = any(7 in P.parse(c.msg, schema=False).fields for c in cps)
        last_created = self._meta("last_planned") or 0
        if not (force or closes_interval or now - float(last_created) >= self.period_s):
            return 0
        queued = 0
        while cps:
            with self._tx_lock:  # the nonce _build takes stays ours until the insert
                raw, n = self._build(head, cps, int(now))
                f = P.parse(raw, schema=False).fields
                with self._atomic():
                    self.db.execute(
                        "INSERT INTO outbox (nonce, kind, digest, tx, first, last, created) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (f[2], C.ANCHOR, P.digest(raw), raw, cps[0].height, cps[n - 1].height,
                         int(now)))
                    self._set_meta("last_planned", now)
            head, cps = cps[n - 1], cps[n:]
            queued += 1
        self.counters["anchors_queued"] += queued
        return queued

    def _build(self, head: Checkpoint | None, cps: list[Checkpoint], now: int) -> tuple[bytes, int]:
        chain = bytes.fromhex(str(self._meta("chain")))
        with self.node.lock:
            cooker = self.node.cooker
            base = head.size if head else 0
            return build_anchor(self.node.key, chain, self._next_nonce(), head, cps,
                                self.node.log, now, cooker.aggregates_in,
                                lambda d: cooker.known_aggregate(d, base),
                                cooker.statements_in)

    def flush(self) -> int:
        """Send queued transactions in nonce order until one fails; returns how many landed."""
        landed = 0
        while not self.halted:
            row = self.db.execute("SELECT nonce, tx FROM outbox WHERE state = 'queued' "
                                  "ORDER BY nonce LIMIT 1").fetchone()
            if row is None:
                break
            nonce, raw = row
            try:
                r = self.client.submit(raw)
            except ChainRefused as e:
                with self._atomic():
                    self.db.execute("UPDATE outbox SET state = 'refused', reason = ? "
                                    "WHERE nonce = ?", (e.reason, nonce))
                    self._halt(f"the chain refused transaction nonce {nonce}: {e}")
                self.counters[f"refused_{e.reason}"] += 1
                break
            with self._atomic():
                self.db.execute("UPDATE outbox SET state = 'landed', height = ?, idx = ?, "
                                "landed = ? WHERE nonce = ?",
                                (r.height, r.index, int(self.clock()), nonce))
            self.counters["landed_duplicate" if r.duplicate else "landed"] += 1
            landed += 1
        return landed

    # -- instructions ------------------------------------------------------------------------
    def _dispatch_keys(self) -> dict[bytes, P.PublicKey]:
        if self.dispatch_pub is not None:
            return {self.dispatch_pub.id: self.dispatch_pub}
        return {bytes.fromhex(p["id"]): P.PublicKey(bytes.fromhex(p["pub"]))
                for p in self.client.participants() if p.get("role") == "dispatch"}

    def poll_instructions(self) -> int:
        """Record new instructions addressed to this fog (carried out by a later issue);
        returns how many were recorded. Each must be signed by a dispatch key. None on a
        link with instructions off (a registry chain sends none)."""
        if not self.instructions_on:
            return 0
        after = int(self._meta("instructions_after") or 0)
        items = self.client.instructions(self.node.key.id.hex(), after)
        if not items:
            return 0
        keys = self._dispatch_keys()
        new = 0
        for item in items:
            raw = bytes.fromhex(item["tx"])
            try:
                m = P.parse(raw)
                key = keys.get(m.kid)
                if key is None:
                    raise ChainClientError(f"instruction signed by {m.kid.hex()}, "
                                           "not a dispatch key")
                f = P.verify_message(m, key).fields
                if f[3] != C.INSTRUCTION or f[4][1] != self.node.key.id:
                    raise ChainClientError("not an instruction for this fog")
            except (P.ProtocolError, ChainClientError) as e:
                self.counters["instructions_rejected"] += 1
                log.warning("instruction %s at block %s ignored: %s", item.get("digest"),
                            item.get("height"), e)
                continue
            cur = self.db.execute(
                "INSERT OR IGNORE INTO instructions (digest, height, idx, tx, received) "
                "VALUES (?, ?, ?, ?, ?)",
                (P.digest(raw), int(item["height"]), int(item["index"]), raw, int(self.clock())))
            new += cur.rowcount
        with self._atomic():
            self._set_meta("instructions_after", max(int(i["height"]) for i in items))
        self.counters["instructions"] += new
        return new

    def instructions(self) -> list[tuple[bytes, int, bytes, str]]:
        """(digest, block height, tx, state) of the recorded instructions, oldest first."""
        rows = self.db.execute("SELECT digest, height, tx, state FROM instructions "
                               "ORDER BY height, idx").fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # -- other transactions (execution reports, faults) ------------------------------------------
    def queue_tx(self, kind: str, body: dict[int, Any],
                 also: Callable[[sqlite3.Connection], None] | None = None) -> bytes:
        """Sign a type-12 transaction of `kind` with this fog's next nonce and store it in the
        outbox, where flush() sends it in nonce order with the anchors; returns its bytes.

        Safe from any thread: the nonce is taken under the lock plan() holds for its own, and
        the insert goes through a connection of its own (the link thread's connection may be
        inside a transaction of flush()). `also`, when given, runs inside the same SQLite
        transaction with that connection, so the caller's "reported" mark is durable together
        with the transaction or not at all. Raises AnchorError until the first sync (the
        chain id and this fog's nonce on the chain are unknown: try again later), and
        ProtocolError for a body the chain would refuse or a message over 4096 bytes."""
        with self._tx_lock:
            db = self._side_db
            if db is None:
                db = connect(self.db_path, wal=False)
                self._side_db = db
            meta = dict(db.execute("SELECT k, v FROM meta WHERE k IN "
                                   "('synced', 'chain', 'base_nonce')").fetchall())
            if meta.get("synced") is None:
                raise AnchorError(f"cannot queue a {kind} transaction before the first contact "
                                  f"with the {self.label} (chain id and nonce unknown)")
            now = int(self.clock())
            with atomic(db):
                # inside the write transaction: the latest outbox, whoever inserted last
                row = db.execute("SELECT MAX(nonce) FROM outbox").fetchone()
                nonce = max(int(row[0] or 0), int(meta.get("base_nonce") or 0)) + 1
                raw = P.sign1(self.node.key, C.tx(self.node.key.id, nonce, kind, body, now,
                                                  bytes.fromhex(str(meta["chain"]))))
                db.execute("INSERT INTO outbox (nonce, kind, digest, tx, created) "
                           "VALUES (?, ?, ?, ?, ?)", (nonce, kind, P.digest(raw), raw, now))
                if also is not None:
                    also(db)
        self.counters[f"{kind}s_queued"] += 1
        return raw
