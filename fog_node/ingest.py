"""Ingest: verify meter messages, check them against what the log holds, commit them in
groups, and only then produce the acks.

Pure service logic over the stores (no MQTT, no HTTP); the clock is passed in. One call to
`process()` handles everything that arrived since the last call as one group commit, which
is what keeps throughput near the signature-verification ceiling: a log transaction costs
one fsync whether it carries 1 reading or 500. The group's signature checks and its ack
signatures, most of the work, run on every core the process may use (on_all_cores).

Rejections never raise: each message gets an Outcome with a stable reason code, counted in
`counters` (docs/PROTOCOL.md, "Fog ingest").
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar, cast

from fog_node.log.store import LogStore
from fog_node.registry import (
    ACTIVE,
    QUARANTINE_PER_METER,
    QUARANTINE_TOTAL,
    REVOKED,
    Birth,
    Device,
    Registry,
)
from fog_node.rejections import RejectionLog, RejectionRecord
from meterledger import wire as P
from meterledger.wire.cbor import ProtocolError, item_end

LOGGED, DUPLICATE, QUARANTINED, REJECTED = "logged", "duplicate", "quarantined", "rejected"
# message types a meter may send on its topics
_FROM_METER = (P.READING, P.BIRTH, P.RESULT)
_T = TypeVar("_T")
_R = TypeVar("_R")
_V = TypeVar("_V")


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: str = ""
    dev: bytes | None = None
    seq: int | None = None
    detail: str = ""
    # a rejected message's bytes, for the durable record's example (RejectionRecord)
    raw: bytes = field(default=b"", repr=False, compare=False)


def _with_raw(o: Outcome | _T, raw: bytes) -> Outcome | _T:
    """A rejection with the bytes it refused (other outcomes as they are)."""
    return replace(o, raw=raw) if isinstance(o, Outcome) and o.status == REJECTED \
        and not o.raw else o


_REMEMBERED = 4096  # unknown meters remembered (births, foreign fogs); the oldest forgotten


def _utc(t: int) -> str:
    """A Unix time for a log line (UTC), or the number itself if no calendar holds it."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return str(t)


def _remember(table: dict[bytes, _V], dev: bytes, value: _V) -> None:
    """table[dev] = value, keeping at most _REMEMBERED entries (oldest dropped): strangers
    cannot grow the fog's memory."""
    table.pop(dev, None)
    table[dev] = value
    while len(table) > _REMEMBERED:
        del table[next(iter(table))]


def split_batch(payload: bytes) -> list[bytes]:
    """One message, or a CBOR array of 1..32 inline messages (docs/PROTOCOL.md, MQTT).

    Anything that does not start with an array head is taken as one message, so that
    parse() names what is wrong with it with the same reasons the meter would use."""
    if not payload:
        raise ProtocolError("malformed", "empty payload")
    first = payload[0]
    if 0x81 <= first <= 0x97:
        n, pos = first & 0x1F, 1
    elif first == 0x98 and len(payload) > 1 and 24 <= payload[1] <= 32:
        n, pos = payload[1], 2
    elif first & 0xE0 == 0x80:
        raise ProtocolError("bad_batch", "a batch holds 1..32 messages")
    else:
        return [payload]
    out = []
    for i in range(n):
        if pos >= len(payload) or payload[pos] != 0xD2:
            raise ProtocolError("bad_tag", f"batch item {i} is not a tagged COSE_Sign1")
        end = item_end(payload, pos, (P.TAG_SIGN1,))
        out.append(payload[pos:end])
        pos = end
    if pos != len(payload):
        raise ProtocolError("trailing_bytes", f"{len(payload) - pos} bytes after the batch")
    return out


@dataclass
class _Pending:
    """A verified message waiting for the group commit."""

    msg: P.Message
    dev: bytes
    seq: int | None
    digest: bytes


@dataclass
class _Verify:
    """A message that passed the checks before its signature: the key to verify it with,
    and the signer's device record (None for a birth of an unknown meter)."""

    msg: P.Message
    key: P.PublicKey
    device: Device | None


def _signature_ok(v: _Verify) -> bool:
    return v.key.verify(v.msg.signature, v.msg.tbs)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_CHUNK = 16  # calls per hand-out: large enough to amortise the lock, small to balance
_helpers: ThreadPoolExecutor | None = None
_helpers_lock = threading.Lock()


def on_all_cores(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """[fn(x) for x in items], spread over the cores this process may use.

    Worth it only for calls that release the GIL, as cryptography's ECDSA verify and sign
    do (the bulk of ingest's time): then threads of one process run them in parallel. The
    calling thread works too, so nothing waits idle; helpers are shared by every Ingest of
    the process and started on first use."""
    global _helpers
    n = len(items)
    cores = _cores()
    if cores < 2 or n < 2 * _CHUNK:
        return [fn(x) for x in items]
    with _helpers_lock:
        if _helpers is None:
            _helpers = ThreadPoolExecutor(cores - 1, thread_name_prefix="ingest-crypto")
        pool = _helpers
    out: list[_R | None] = [None] * n
    starts = iter(range(0, n, _CHUNK))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            for i in range(start, min(start + _CHUNK, n)):
                out[i] = fn(items[i])

    futures = [pool.submit(work) for _ in range(min(cores - 1, n // _CHUNK - 1))]
    work()
    for f in futures:
        f.result()  # re-raises a helper's exception here
    return cast(list[_R], out)  # every slot is filled now


class Ingest:
    def __init__(self, key: P.SigningKey, log: LogStore, registry: Registry,
                 clock: Callable[[], float], skew_s: int = 300,
                 quarantine_per_meter: int = QUARANTINE_PER_METER,
                 quarantine_total: int = QUARANTINE_TOTAL) -> None:
        self.key = key
        self.log = log
        self.registry = registry
        self.clock = clock
        self.skew_s = skew_s
        self.rejections = RejectionLog()
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._pubs: dict[bytes, P.PublicKey] = {}
        # the hot path keeps each meter's record and its highest logged (seq, digest) in
        # memory, so an in-order reading costs no database lookups; SQLite is asked only
        # for out-of-order readings and gap fills
        self._devices: dict[bytes, Device | None] = {}
        self._last: dict[bytes, tuple[int, bytes | None]] = {}
        self._contig: dict[bytes, int] = {}
        self._births: dict[bytes, bytes] = {}  # dev -> digest of the last logged birth
        self.pending_births: dict[bytes, bytes] = {}  # unknown meters' births (pub) seen
        self.pending_seen: dict[bytes, Birth] = {}  # and what they said (not logged)
        self.record = RejectionRecord(registry.db)  # rejections, kept across restarts
        self._foreign: dict[bytes, bytes] = {}  # unknown meters whose birth names another fog
        self.quarantine_per_meter = quarantine_per_meter
        self.quarantine_total = quarantine_total
        # set when a group failed part way (a full disk between the log's commit and the
        # registry's): the next group first re-indexes the log, so the registry never
        # answers from a stale index and nothing is logged twice
        self.needs_recovery = False

    def recover(self) -> int:
        """Re-index log entries the registry has not seen (a crash between the log's commit
        and the registry's); returns how many entries were re-indexed. Call at startup."""
        start, size = self.registry.indexed_upto(), self.log.size()
        rows = []
        births: list[tuple[Birth, int]] = []
        for idx in range(start, size):
            m = P.parse(self.log.entry(idx), schema=False)
            f = m.fields
            if m.type == P.READING:
                rows.append((m.kid, f[2], m.digest, idx, f[3]))
            elif m.type == P.ENROLLMENT:
                self.registry.set_status(f[1], f[10], f[18], f[19], f[6], idx)
            elif m.type == P.BIRTH:
                self._births[m.kid] = m.digest
                births.append((Birth.of(f, int(self.clock()),
                                        self.registry.contiguous_seq(m.kid)), idx))
        self.registry.record_readings(rows, size, births)
        self._forget()
        self.counters["recovered_entries"] += size - start
        return size - start

    def _forget(self, dev: bytes | None = None) -> None:
        for cache in (self._devices, self._last, self._contig, self._pubs):
            if dev is None:
                cache.clear()
            else:
                cache.pop(dev, None)

    def _device(self, dev: bytes) -> Device | None:
        if dev not in self._devices:
            self._devices[dev] = self.registry.device(dev)
        return self._devices[dev]

    def _last_logged(self, dev: bytes) -> tuple[int, bytes | None]:
        last = self._last.get(dev)
        if last is None:
            d = self._device(dev)
            last = self._last[dev] = (d.last_seq, d.last_digest) if d else (0, None)
        return last

    # -- enrollment ---------------------------------------------------------------------
    def decide(self, pub: bytes, status: str, reason: str) -> tuple[bytes, list[Outcome], list[tuple[bytes, bytes]]]:
        """Log a type-8 enrollment decision; on activation, release the quarantine.

        Returns the decision message, and the outcomes and acks of released readings."""
        key = P.PublicKey(pub)
        now = int(self.clock())
        msg = P.sign1(self.key, P.enrollment(key.id, pub, status, reason, now, self.key.id))
        first = self.log.append_batch([msg])
        self.registry.set_status(key.id, pub, status, reason, now, first)
        self.registry.record_readings([], self.log.size())
        self._forget(key.id)
        self.counters["enrollments" if status == ACTIVE else "revocations"] += 1
        outcomes: list[Outcome] = []
        acks: list[tuple[bytes, bytes]] = []
        if status == ACTIVE:
            released = list(self.registry.release(key.id))
            if released:
                self.counters["quarantine_released"] += len(released)
                outcomes, acks = self.process(released)
        return msg, outcomes, acks

    # -- the pipeline -------------------------------------------------------------------------
    def _reject(self, reason: str, detail: str, dev: bytes | None = None,
                seq: int | None = None) -> Outcome:
        self.rejected[reason] += 1
        return Outcome(REJECTED, reason, dev, seq, detail)

    def _pub(self, dev: bytes, pub: bytes) -> P.PublicKey:
        k = self._pubs.get(dev)
        if k is None:
            k = self._pubs[dev] = P.PublicKey(pub)
        return k

    def process(self, payloads: Sequence[bytes], topic_devs: Sequence[bytes | None] | None = None,
                ) -> tuple[list[Outcome], list[tuple[bytes, bytes]]]:
        """Verify, check and log a group of payloads (`_process`). If anything fails part
        way (a storage fault), the caches are dropped and the next call re-indexes the log
        before it looks at a message; nothing of the failed group is acked. The outcomes go
        to `rejections` too, which tells the operator why messages were refused, and to
        `record`, which counts the rejections and writes them to registry.db (for GET
        /v1/rejections) at most about once a second, never failing the group."""
        if self.needs_recovery:
            self.recover()
            self.needs_recovery = False
        try:
            result = self._process(payloads, topic_devs)
        except BaseException:
            self.needs_recovery = True
            self._forget()
            raise
        self.rejections.note(result[0])
        self.record.note(int(self.clock()), result[0])  # counted; written about once a second
        return result

    def _process(self, payloads: Sequence[bytes], topic_devs: Sequence[bytes | None] | None,
                 ) -> tuple[list[Outcome], list[tuple[bytes, bytes]]]:
        """Verify, check and log a group of payloads; returns outcomes and (dev, ack) to send.

        topic_devs, when given, is the meter id of the topic each payload arrived on: a
        message signed by another meter than its topic names is rejected (topic_mismatch).
        The acks are built only after the log transaction committed.

        Three passes keep the result that of checking message after message while the
        signatures, which do not depend on each other, are verified on every core: the
        checks up to the signature, then all signatures, then the rest in arrival order."""
        now = int(self.clock())
        slots: list[Outcome | _Verify] = []
        for i, payload in enumerate(payloads):
            try:
                raws = split_batch(payload)
            except ProtocolError as e:
                slots.append(_with_raw(self._reject(e.reason, str(e)), payload))
                continue
            topic_dev = topic_devs[i] if topic_devs is not None else None
            for raw in raws:
                slots.append(_with_raw(self._precheck(raw, now, topic_dev), raw))
        valid = iter(on_all_cores(_signature_ok, [s for s in slots if isinstance(s, _Verify)]))
        outcomes: list[Outcome] = []
        batch: list[_Pending] = []
        in_batch: dict[tuple[bytes, int], tuple[bytes, bytes]] = {}  # (dev, seq) -> digest, prev
        touched: set[bytes] = set()
        for slot in slots:
            out = slot if isinstance(slot, Outcome) else _with_raw(self._accept(
                slot, next(valid), now, batch, in_batch, touched), slot.msg.raw)
            if out is not None:
                outcomes.append(out)
        if batch:
            first = self.log.append_batch([p.msg.raw for p in batch])
            rows = [(p.dev, p.seq, p.digest, first + i, p.msg.fields[3])
                    for i, p in enumerate(batch) if p.seq is not None]
            births = [(Birth.of(p.msg.fields, now, self._contiguous(p.dev)), first + i)
                      for i, p in enumerate(batch) if p.msg.type == P.BIRTH]
            self.registry.record_readings(rows, self.log.size(), births)
            per_dev: dict[bytes, list[int]] = {}
            for dev, seq, digest, _, _ in rows:
                if seq > self._last_logged(dev)[0]:
                    self._last[dev] = (seq, digest)
                per_dev.setdefault(dev, []).append(seq)
            for dev, seqs in per_dev.items():
                self._advance(dev, seqs)
            for p in batch:
                outcomes.append(Outcome(LOGGED, "", p.dev, p.seq))
                if p.msg.type == P.BIRTH:
                    self._births[p.dev] = p.digest
            self.counters["logged"] += len(batch)
        # committed: now the acks, one signature per meter, signed on every core
        todo = [(dev, a) for dev in sorted(touched) if (a := self._ack_payload(dev, now))]
        signed = on_all_cores(self._sign, [a for _, a in todo])
        return outcomes, [(dev, raw) for (dev, _), raw in zip(todo, signed, strict=True)]

    def _contiguous(self, dev: bytes) -> int:
        c = self._contig.get(dev)
        if c is None:
            c = self._contig[dev] = self.registry.contiguous_seq(dev)
        return c

    def _advance(self, dev: bytes, seqs: list[int]) -> None:
        """Move dev's contiguous seq over readings just committed. Only a meter with holes
        above it needs the database: a filled hole may join readings logged earlier."""
        c = self._contiguous(dev)
        for seq in sorted(seqs):
            if seq == c + 1:
                c = seq
        if self._last_logged(dev)[0] > c:
            c = self.registry.contiguous_seq(dev)
        self._contig[dev] = c

    def ack_for(self, dev: bytes, now: int) -> bytes | None:
        """The ack for everything 1..seq of dev now durably logged, or None."""
        payload = self._ack_payload(dev, now)
        return None if payload is None else self._sign(payload)

    def _ack_payload(self, dev: bytes, now: int) -> bytes | None:
        seq = self._contiguous(dev)
        if seq == 0:
            return None
        last_seq, last_digest = self._last_logged(dev)
        digest = last_digest if seq == last_seq else self._logged(dev, seq)
        assert digest is not None
        self.counters["acks"] += 1
        return P.ack_payload(dev, seq, digest, now, self.key.id)

    def _sign(self, payload: bytes) -> bytes:
        # our own builder's output: no need to re-parse it as a receiver would
        return P.sign1_encoded(self.key, payload)

    def _precheck(self, raw: bytes, now: int, topic_dev: bytes | None) -> Outcome | _Verify:
        """The checks before the signature: an Outcome if they settle the message, else
        the signature check it needs (with the device record for the checks after it)."""
        try:
            m = P.parse(raw, schema=False)
        except ProtocolError as e:
            return self._reject(e.reason, str(e))
        if topic_dev is not None and m.kid != topic_dev:
            return self._reject("topic_mismatch", f"message of meter {m.kid.hex()} on the topic "
                                f"of meter {topic_dev.hex()}", m.kid)
        if m.type not in _FROM_METER:
            return self._reject("wrong_type", f"type {m.type} is not sent by meters", m.kid)
        dev = m.kid
        device = self._device(dev)
        if m.type == P.BIRTH:
            try:  # a birth is self-signed
                key = P.PublicKey(m.fields.get(10, b""))
            except ProtocolError as e:
                return self._reject(e.reason, str(e), dev)
        elif device is None:
            try:  # keep only what a meter could have signed: structure and schema now,
                P.check_fields(m.fields)  # the signature once we know its key
            except ProtocolError as e:
                return self._reject(e.reason, str(e), dev)
            fog = self._foreign.get(dev)
            if fog is not None:  # its birth named another fog: not ours to hold
                return self._reject("wrong_fog", f"meter is configured for fog {fog.hex()}",
                                    dev)
            _, dropped = self.registry.quarantine(dev, raw, now, self.quarantine_per_meter,
                                                  self.quarantine_total)
            self.counters["quarantined"] += 1
            self.counters["quarantine_dropped"] += dropped
            return Outcome(QUARANTINED, "unknown_meter", dev, m.fields.get(2))
        elif device.status == REVOKED:
            return self._reject("revoked", "meter is revoked: " + device.reason, dev)
        else:
            key = self._pub(dev, device.pub)
        if m.kid != key.id:  # verify_message's first check, before the signature
            return self._reject("kid_mismatch", "message was signed by a different party", dev)
        return _Verify(m, key, device)

    def _accept(self, v: _Verify, signature_ok: bool, now: int, batch: list[_Pending],
                in_batch: dict[tuple[bytes, int], tuple[bytes, bytes]], touched: set[bytes],
                ) -> Outcome | None:
        """The checks after the signature (verify_message's schema check, then the log's)."""
        m, dev = v.msg, v.msg.kid
        if not signature_ok:
            return self._reject("bad_signature", "ECDSA signature does not verify", dev)
        try:
            P.check_message_fields(m)
        except ProtocolError as e:
            return self._reject(e.reason, str(e), dev)
        if m.type == P.BIRTH:
            return self._birth(m, v.device, batch, now)
        if m.type == P.RESULT:
            batch.append(_Pending(m, dev, None, m.digest))
            return None
        return self._reading(m, dev, now, batch, in_batch, touched)

    def _birth(self, m: P.Message, device: object, batch: list[_Pending],
               now: int) -> Outcome | None:
        f = m.fields
        if f[16] != self.key.id:
            if device is None:  # its readings are refused too, never quarantined
                _remember(self._foreign, m.kid, f[16])
            return self._reject("wrong_fog", "meter is configured for another fog", m.kid)
        if device is None:
            _remember(self.pending_births, m.kid, f[10])  # listed for the operator to enroll
            _remember(self.pending_seen, m.kid, Birth.of(f, now, 0))
            self.counters["births_unknown"] += 1
            return Outcome(QUARANTINED, "unknown_meter", m.kid)
        digest = m.digest
        if self._births.get(m.kid) == digest:
            self.counters["duplicates"] += 1
            return Outcome(DUPLICATE, "", m.kid)
        batch.append(_Pending(m, m.kid, None, digest))
        return None

    def _reading(self, m: P.Message, dev: bytes, now: int, batch: list[_Pending],
                 in_batch: dict[tuple[bytes, int], tuple[bytes, bytes]], touched: set[bytes]) -> Outcome | None:
        f = m.fields
        seq, digest = f[2], m.digest
        last_seq, last_digest = self._last_logged(dev)
        here = in_batch.get((dev, seq))
        logged = here[0] if here else (None if seq > last_seq else self._logged(dev, seq))
        if logged is not None:
            touched.add(dev)  # the meter missed our ack: send it again
            if logged == digest:
                self.counters["duplicates"] += 1
                return Outcome(DUPLICATE, "", dev, seq)
            self.registry.add_evidence(dev, seq, logged, m.raw, now)
            self.registry.alert(now, "equivocation", dev,
                                f"seq {seq} signed twice with different contents")
            return self._reject("equivocation", f"seq {seq} already logged with another digest",
                                dev, seq)
        if not f[7] & P.CLOCK_UNSYNCED and f[3] > now + self.skew_s:
            return self._reject("future_t", f"t {f[3]} ({_utc(f[3])}) is {f[3] - now} s "
                                f"ahead of the fog's clock {now} ({_utc(now)}); "
                                f"{self.skew_s} s allowed", dev, seq)
        # the hash chain through prev must hold with both neighbours we already have
        before = in_batch.get((dev, seq - 1))
        if before:
            prev: bytes | None = before[0]
        elif seq - 1 >= last_seq:
            prev = last_digest if seq - 1 == last_seq else None
        else:
            prev = self._logged(dev, seq - 1)
        if seq > 1 and prev is not None and prev != f[8]:
            return self._broken_chain(dev, seq, now, f"prev of seq {seq} is not the digest of "
                                      f"logged seq {seq - 1}")
        after = in_batch.get((dev, seq + 1))
        if after:
            next_prev: bytes | None = after[1]
        else:
            next_prev = None if seq + 1 > last_seq else self._logged_prev(dev, seq + 1)
        if next_prev is not None and next_prev != digest:
            return self._broken_chain(dev, seq, now, f"logged seq {seq + 1} does not link to "
                                      "this reading")
        in_batch[(dev, seq)] = (digest, f[8])
        batch.append(_Pending(m, dev, seq, digest))
        touched.add(dev)
        return None

    def _logged(self, dev: bytes, seq: int) -> bytes | None:
        row = self.registry.logged_digest(dev, seq)
        return row[0] if row else None

    def _logged_prev(self, dev: bytes, seq: int) -> bytes | None:
        row = self.registry.logged_digest(dev, seq)
        if row is None:
            return None
        prev: bytes = P.parse(self.log.entry(row[1]), schema=False).fields[8]
        return prev

    def _broken_chain(self, dev: bytes, seq: int, now: int, detail: str) -> Outcome:
        self.registry.alert(now, "prev_mismatch", dev, detail)
        return self._reject("prev_mismatch", detail, dev, seq)
