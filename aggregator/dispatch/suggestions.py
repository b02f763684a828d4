"""Suggestions: what the registered rule sets propose, kept with the dispatcher's decision.

`SuggestionStore` keeps suggestions in `data_dir/suggestions.db` (SQLite) with their state:
"open", "approved" (with the instruction transaction that carried it out) or "dismissed".
It is not chain state: it holds the dispatcher's decisions, which the chain records only as
the instructions they produced. `Dispatcher` refreshes it from the chain (the newest version
of every registered rule set against every anchored aggregate, rules.suggest) and approves
(signs and submits the instruction with the dispatch key) or dismisses.

When a rule keeps firing for later intervals, a new suggestion for the same (rule set name,
rule id, fog, feeder) is recorded only if the previous one is decided, its intervals do not
overlap the new run (so a dismissed run is not asked about again, and a run that goes on is
asked about again after for_intervals more intervals), and, if it was approved, its
instruction has expired (not_after passed): an approved curtailment is in force until then.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aggregator.chain.ledger import (
    AggregateView,
    AggregatorError,
    ChainError,
    Ledger,
    NotFoundError,
    Receipt,
    StorageError,
)
from aggregator.chain.rulesets import RANGES as RULE_RANGES
from aggregator.dispatch.rules import OPS, RulesError, RuleSet, Suggestion, parse_rules, suggest
from meterledger import wire as P
from meterledger.infra.sqlite import connect
from meterledger.wire import chain as C
from meterledger.wire.cbor import ProtocolError

log = logging.getLogger("aggregator.dispatch.suggestions")

OPEN, APPROVED, DISMISSED = "open", "approved", "dismissed"
STATES = (OPEN, APPROVED, DISMISSED)
NONCE_RETRIES = 5  # fresh nonces to try when a concurrent dispatch transaction took ours
PAGE = (100, 500)  # GET /v1/suggestions: (default, most) suggestions per answer
# the newest revision of this many intervals is kept per (fog, feeder): a rule's run is at
# most its for_intervals (the rule grammar's bound) newest intervals
KEPT_IVLS = RULE_RANGES["for_intervals"][1]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS suggestions (id TEXT PRIMARY KEY, rules_name TEXT NOT NULL, "
    "rule TEXT NOT NULL, fog BLOB NOT NULL, feeder TEXT NOT NULL, rules_digest BLOB NOT NULL, "
    "metric TEXT NOT NULL, ivls TEXT NOT NULL, vals TEXT NOT NULL, op TEXT NOT NULL, "
    "arg TEXT NOT NULL, devs TEXT NOT NULL, valid_s INTEGER NOT NULL, why TEXT NOT NULL, "
    "created INTEGER NOT NULL, state TEXT NOT NULL, instruction BLOB, height INTEGER, "
    "idx INTEGER, not_after INTEGER, decided INTEGER)",
    "CREATE INDEX IF NOT EXISTS suggestions_by_key ON suggestions "
    "(rules_name, rule, fog, feeder, created)",
)
_COLUMNS = ("id, rules_name, rule, fog, feeder, rules_digest, metric, ivls, vals, op, arg, "
            "devs, valid_s, why, created, state, instruction, height, idx, not_after, decided, "
            "aggs")
# added later: the aggregates that triggered each suggestion (NULL in an older row)
_AGGS = "ALTER TABLE suggestions ADD COLUMN aggs TEXT"


@dataclass(frozen=True)
class Trigger:
    """One aggregate a suggestion was made from: its interval, the rule's metric's value
    there, and the anchored aggregate (its digest, revision, the anchor's block and index)."""

    ivl: int
    value: float
    digest: bytes
    rev: int
    height: int
    index: int

    def as_json(self) -> dict[str, Any]:
        return {"ivl": self.ivl, "value": self.value, "digest": self.digest.hex(),
                "rev": self.rev, "height": self.height, "index": self.index}


class SuggestionStateError(AggregatorError):
    """An approve or dismiss of a suggestion that is not open."""


@dataclass(frozen=True)
class StoredSuggestion:
    suggestion: Suggestion
    state: str
    instruction: bytes | None = None  # approved: the instruction transaction's digest
    height: int | None = None
    index: int | None = None
    not_after: int | None = None  # approved: the instruction's not_after
    decided: int | None = None  # when it was approved or dismissed
    aggregates: tuple[Trigger, ...] | None = None  # None: a row from before they were kept

    def as_json(self) -> dict[str, Any]:
        s = self.suggestion
        return {"id": s.id, "state": self.state, "fog": s.fog.hex(), "feeder": s.feeder,
                "rule": s.rule, "rules_name": s.rules_name, "rules_digest": s.rules_digest.hex(),
                "metric": s.metric, "ivls": list(s.ivls), "values": list(s.values),
                "op": s.op, "args": {OPS[s.op][0]: s.args[1]},
                "devs": [d.hex() for d in s.devs], "valid_s": s.valid_s, "why": s.why,
                "created": s.created,
                "instruction": self.instruction.hex() if self.instruction else None,
                "height": self.height, "index": self.index, "not_after": self.not_after,
                "decided": self.decided,
                "aggregates": [a.as_json() for a in self.aggregates or ()]}


def _row(r: Any) -> StoredSuggestion:
    (sid, rules_name, rule, fog, feeder, digest, metric, ivls, vals, op, arg, devs, valid_s,
     why, created, state, instruction, height, idx, not_after, decided, aggs) = r
    s = Suggestion(sid, bytes(fog), feeder, rule, rules_name, bytes(digest), metric,
                   tuple(json.loads(ivls)), tuple(json.loads(vals)), op, {1: json.loads(arg)},
                   tuple(bytes.fromhex(d) for d in json.loads(devs)), valid_s, why, created)
    triggers = None if aggs is None else tuple(
        Trigger(ivl, value, bytes.fromhex(d), rev, h, i)
        for ivl, value, d, rev, h, i in json.loads(aggs))
    return StoredSuggestion(s, state, bytes(instruction) if instruction is not None else None,
                            height, idx, not_after, decided, triggers)


def _aggs_json(triggers: Sequence[Trigger] | None) -> str | None:
    if triggers is None:
        return None
    return json.dumps([[t.ivl, t.value, t.digest.hex(), t.rev, t.height, t.index]
                       for t in triggers])


class SuggestionStore:
    """Suggestions in one SQLite file (WAL); safe from several threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            self._db: sqlite3.Connection | None = connect(self.path, timeout=30)
            for statement in _SCHEMA:
                self._db.execute(statement)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(suggestions)")}
            if "aggs" not in columns:
                self._db.execute(_AGGS)
        except sqlite3.Error as e:
            raise StorageError(f"{self.path}: cannot open as a suggestion store: {e}") from e

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            if self._db is None:
                raise StorageError(f"the suggestion store {self.path} was used after close()")
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StorageError(f"{self.path}: {e}") from e

    def record(self, candidates: list[Suggestion], now: int,
               triggers: Callable[[Suggestion], Sequence[Trigger] | None] = lambda s: None,
               ) -> list[StoredSuggestion]:
        """Store the candidates the policy of the module doc lets in, each with its
        `triggers` (the aggregates it was made from); returns those."""
        added: list[StoredSuggestion] = []
        for s in candidates:
            if self._exec("SELECT 1 FROM suggestions WHERE id = ?", (s.id,)):
                continue
            last = self._exec(f"SELECT {_COLUMNS} FROM suggestions WHERE rules_name = ? AND "
                              "rule = ? AND fog = ? AND feeder = ? ORDER BY created DESC, "
                              "rowid DESC LIMIT 1", (s.rules_name, s.rule, s.fog, s.feeder))
            if last:
                prev = _row(last[0])
                if prev.state == OPEN or s.ivls[0] <= prev.suggestion.ivls[-1]:
                    continue
                if prev.state == APPROVED and now < (prev.not_after or 0):
                    continue
            made = triggers(s)
            found = None if made is None else tuple(made)
            self._exec(f"INSERT INTO suggestions ({_COLUMNS}) VALUES "
                       f"({', '.join('?' * 22)})",
                       (s.id, s.rules_name, s.rule, s.fog, s.feeder, s.rules_digest, s.metric,
                        json.dumps(list(s.ivls)), json.dumps(list(s.values)), s.op,
                        json.dumps(s.args[1]), json.dumps([d.hex() for d in s.devs]),
                        s.valid_s, s.why, s.created, OPEN, None, None, None, None, None,
                        _aggs_json(found)))
            added.append(StoredSuggestion(s, OPEN, aggregates=found))
        return added

    def page(self, state: str | None, before: int | None,
             limit: int) -> tuple[list[StoredSuggestion], int | None]:
        """The newest `limit` suggestions (in `state`; recorded before the one numbered
        `before`), listed oldest first as `list` does, and the `before` of the next (older)
        page (None: there is none). A suggestion's number is its place in recording order."""
        where: list[str] = ["1"]
        args: list[Any] = []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if before is not None:
            where.append("rowid < ?")
            args.append(before)
        rows = self._exec(f"SELECT rowid, {_COLUMNS} FROM suggestions WHERE "
                          f"{' AND '.join(where)} ORDER BY rowid DESC LIMIT ?",
                          (*args, max(0, limit) + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        rows.sort(key=lambda r: (r[15], r[0]))  # created, then recording order
        nxt = min(r[0] for r in rows) if more and rows else None
        return [_row(r[1:]) for r in rows], nxt

    def list(self, state: str | None = None) -> list[StoredSuggestion]:
        """Oldest first; only those in `state` when given."""
        where, args = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        return [_row(r) for r in self._exec(
            f"SELECT {_COLUMNS} FROM suggestions {where} ORDER BY created, rowid", args)]

    def get(self, sid: str) -> StoredSuggestion:
        rows = self._exec(f"SELECT {_COLUMNS} FROM suggestions WHERE id = ?", (sid,))
        if not rows:
            raise NotFoundError(f"no suggestion {sid}")
        return _row(rows[0])

    def approved(self, sid: str, r: Receipt, not_after: int, now: int) -> None:
        self._exec("UPDATE suggestions SET state = ?, instruction = ?, height = ?, idx = ?, "
                   "not_after = ?, decided = ? WHERE id = ?",
                   (APPROVED, r.digest, r.height, r.index, not_after, now, sid))

    def dismissed(self, sid: str, now: int) -> None:
        self._exec("UPDATE suggestions SET state = ?, decided = ? WHERE id = ?",
                   (DISMISSED, now, sid))

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()


def submit_signed(ledger: Ledger, key: P.SigningKey, make: Callable[[int], bytes]) -> Receipt:
    """Submit the transaction make(nonce) with the key's next nonce; a concurrent
    transaction of the same key taking that nonce is retried with a fresh one."""
    for attempt in range(NONCE_RETRIES):
        me = ledger.participant(key.id)
        if me is None:
            raise ChainError("unregistered", f"the dispatch key {key.id_hex} is no participant "
                                             "of this chain")
        try:
            raw = make(me.nonce + 1)
        except ProtocolError as e:  # e.g. a why too long for 4096 bytes
            raise ChainError(e.reason, str(e)) from None
        try:
            return ledger.submit(raw)
        except ChainError as e:
            if e.reason != "nonce_reused":
                raise
        time.sleep(0.05 * (attempt + 1))  # the other transaction's block is being sealed
    raise ChainError("nonce_reused", f"other transactions kept taking the dispatch key's next "
                                     f"nonce ({NONCE_RETRIES} tries)")


class Dispatcher:
    """Suggestions from the chain's rule sets and aggregates, and the dispatcher's decisions
    on them (see the module doc). Thread-safe; `clock` gives Unix seconds."""

    def __init__(self, ledger: Ledger, key: P.SigningKey, store: SuggestionStore,
                 clock: Callable[[], float]) -> None:
        self.ledger, self.key, self.store, self.clock = ledger, key, store, clock
        self._lock = threading.Lock()
        self._seen = -1  # aggregates of blocks up to this height are in _series
        self._series: dict[tuple[bytes, str], list[P.Fields]] = {}
        # the newest revision of each (fog, feeder, ivl), as rules.newest_revisions picks it;
        # per (fog, feeder), only the KEPT_IVLS newest intervals
        self._newest: dict[tuple[bytes, str], dict[int, AggregateView]] = {}
        self._parsed: dict[bytes, RuleSet | None] = {}  # by digest; None: does not parse
        self.counters: Counter[str] = Counter()  # rules_skipped: registered, not parsing

    def _rule_sets(self) -> list[RuleSet]:
        newest: dict[str, tuple[int, bytes, str]] = {}
        for r in self.ledger.rules():
            if r.version > newest.get(r.name, (0, b"", ""))[0]:
                newest[r.name] = (r.version, r.digest, r.text)
        out = []
        for name in sorted(newest):
            version, digest, text = newest[name]
            if digest not in self._parsed:
                self._parsed[digest] = self._parse(name, version, digest, text)
            rs = self._parsed[digest]
            if rs is not None:
                out.append(rs)
        return out

    def _parse(self, name: str, version: int, digest: bytes, text: str) -> RuleSet | None:
        """The registered rule set, or None (logged and counted in `counters`) when it does
        not parse: only a chain from before the chain refused such texts holds one, and the
        dispatcher must go on serving the others."""
        try:
            return parse_rules(text, f"rule set {name!r} v{version}")
        except RulesError as e:
            log.warning("skipping registered rule set %s (%s): %s; it proposes nothing",
                        name, digest.hex()[:16], e)
        except Exception:  # a grammar bug must not take the suggestions down with it
            log.exception("skipping registered rule set %s (%s): the parser failed",
                          name, digest.hex()[:16])
        self.counters["rules_skipped"] += 1
        return None

    def refresh(self) -> list[StoredSuggestion]:
        """Read what the chain added since the last refresh and record new suggestions."""
        with self._lock:
            touched: set[tuple[bytes, str]] = set()
            for a in self.ledger.aggregates(after_height=self._seen):
                fields = P.parse(a.msg, schema=False).fields  # the chain checked it
                self._series.setdefault((a.fog, a.feeder), []).append(fields)
                ivls = self._newest.setdefault((a.fog, a.feeder), {})
                have = ivls.get(a.ivl)
                if have is None or a.rev >= have.rev:
                    ivls[a.ivl] = a
                touched.add((a.fog, a.feeder))
                self._seen = max(self._seen, a.height)
            for key in touched:
                self._prune(self._newest[key])
            now = int(self.clock())
            added = self.store.record(suggest(self._rule_sets(), self._series, now), now,
                                      self._triggers)
            for stored in added:
                s = stored.suggestion
                log.info("suggestion %s: rule %s (%s) on fog %s feeder %s, %s %s over "
                         "intervals %s: proposes %s %s", s.id[:16], s.rule, s.rules_name,
                         s.fog.hex(), s.feeder, s.metric, list(s.values), list(s.ivls), s.op,
                         s.args[1])
            return added

    @staticmethod
    def _prune(ivls: dict[int, AggregateView], keep: int | None = None) -> None:
        """Forget all but the `keep` (KEPT_IVLS) newest intervals."""
        n = KEPT_IVLS if keep is None else keep
        if len(ivls) > n:
            for ivl in sorted(ivls)[:len(ivls) - n]:
                del ivls[ivl]

    def _triggers(self, s: Suggestion) -> tuple[Trigger, ...]:
        """The anchored aggregates of the suggestion's intervals (newest revisions)."""
        out = []
        ivls = self._newest.get((s.fog, s.feeder), {})
        for ivl, value in zip(s.ivls, s.values, strict=True):
            a = ivls.get(ivl)
            if a is not None:
                out.append(Trigger(ivl, value, a.digest, a.rev, a.height, a.index))
        return tuple(out)

    def suggestions(self, state: str | None = None) -> list[StoredSuggestion]:
        """The stored suggestions (those in `state`), oldest first; one recorded before the
        triggering aggregates were kept shows its intervals' newest revisions now."""
        self.refresh()
        return self._with_triggers(self.store.list(state))

    def suggestion_page(self, state: str | None = None, before: int | None = None,
                        limit: int = PAGE[0]) -> tuple[list[StoredSuggestion], int | None]:
        """The newest `limit` (below `before`) as SuggestionStore.page gives them, with
        their triggering aggregates as `suggestions` shows them; the next page's `before`."""
        self.refresh()
        listed, nxt = self.store.page(state, before, limit)
        return self._with_triggers(listed), nxt

    def _with_triggers(self, listed: list[StoredSuggestion]) -> list[StoredSuggestion]:
        with self._lock:
            return [s if s.aggregates is not None else
                    replace(s, aggregates=self._triggers(s.suggestion)) for s in listed]

    def approve(self, sid: str) -> Receipt:
        """Sign the suggestion's instruction with the dispatch key (valid from now for its
        valid_s), submit it, and mark the suggestion approved."""
        with self._lock:
            s = self._open(sid)
            now = int(self.clock())
            body = s.suggestion.instruction_body(now)
            receipt = submit_signed(self.ledger, self.key, lambda nonce: P.sign1(
                self.key, C.tx(self.key.id, nonce, C.INSTRUCTION, body, now,
                               self.ledger.chain_id)))
            self.store.approved(sid, receipt, body[4], now)
            log.info("suggestion %s approved: instruction %s in block %d", sid[:16],
                     receipt.digest.hex()[:16], receipt.height)
            return receipt

    def dismiss(self, sid: str) -> StoredSuggestion:
        with self._lock:
            self._open(sid)
            self.store.dismissed(sid, int(self.clock()))
            log.info("suggestion %s dismissed", sid[:16])
            return self.store.get(sid)

    def _open(self, sid: str) -> StoredSuggestion:
        s = self.store.get(sid)
        if s.state != OPEN:
            raise SuggestionStateError(f"suggestion {sid} is {s.state}, not open")
        return s


def open_dispatcher(ledger: Ledger, key: P.SigningKey, data_dir: Path,
                    clock: Callable[[], float]) -> Dispatcher:
    return Dispatcher(ledger, key, SuggestionStore(data_dir / "suggestions.db"), clock)
