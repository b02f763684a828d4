"""What the fog tells its operator about messages it refused: the first rejection of each
reason per meter, logged once with the reason, the detail and a hint at the usual cause,
then one summary line per meter and reason per `summary_s` while they go on.

Counters (/metrics) say how many; this says why, without drowning a log in 60,000 copies of
the same line when a meter's clock is a year ahead. Memory is bounded: at most
`_TRACKED` (meter, reason) pairs are remembered (the oldest forgotten), so strangers
spraying junk cannot grow it; their messages still count in ingest's counters.
"""

from __future__ import annotations

import logging
import time as _time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("fog_node.rejections")

_TRACKED = 4096
SUMMARY_S = 60.0
FIRSTS_PER_WINDOW = 20  # new (meter, reason) first lines per summary window, at most

# why a reason usually happens, and what to do about it (the operator's next step)
HINTS = {
    "future_t": "the meter's clock is ahead of the fog's: a virtual meter on a simulated "
                "clock needs the fog's (run both with the same --sim-* settings, or give the "
                "meters --sim-clock DATA_DIR/sim-clock.json); a board needs NTP or a `time` "
                "command",
    "unknown_meter": "not enrolled: its messages are kept in quarantine until "
                     "`meterledger fog enroll --pub PUB` (see `meterledger fog devices`)",
    "revoked": "this meter was revoked; enroll it again to accept it",
    "wrong_fog": "the meter is configured for another fog (its --fog / config fog id)",
    "topic_mismatch": "a message signed by one meter arrived on another meter's topic",
    "equivocation": "the meter signed two different readings with one seq (a cloned key or "
                    "a restored flash image)",
    "prev_mismatch": "the reading does not chain to the meter's previous one (a restored or "
                     "wiped flash)",
    "bad_signature": "the signature does not verify with the enrolled key (a re-keyed meter "
                     "must be enrolled again)",
}


def hint(reason: str) -> str:
    return HINTS.get(reason, "see docs/PROTOCOL.md section 3 and 12 for this reason code")


_REFUSED = ("rejected", "quarantined")


class Refusal(Protocol):
    """What an ingest Outcome (fog_node.ingest) tells of a message."""

    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def dev(self) -> bytes | None: ...
    @property
    def detail(self) -> str: ...


@dataclass
class _Seen:
    since: float      # start of the current summary window
    more: int = 0     # rejections after the first one, in this window
    last_detail: str = ""


class RejectionLog:
    """Feed it each group's outcomes (`note`); it logs what an operator needs to see."""

    def __init__(self, summary_s: float = SUMMARY_S, tracked: int = _TRACKED,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.summary_s = summary_s
        self.tracked = tracked
        # real time paces the summaries, never the node's (possibly simulated) clock
        self.monotonic = monotonic or _time.monotonic
        self.seen: OrderedDict[tuple[bytes, str], _Seen] = OrderedDict()
        # first lines per window: strangers with fresh key ids must not flood the log
        self.firsts_max = FIRSTS_PER_WINDOW
        self._window = self.monotonic()
        self._firsts = 0
        self._held: Counter[str] = Counter()  # reason -> first lines held back
        self._scan_at = 0.0

    def note(self, outcomes: Iterable[Refusal]) -> None:
        """One ingest group's outcomes (on the ingest thread: a logged one costs a compare)."""
        now = self.monotonic()
        for o in outcomes:
            if o.status in _REFUSED:
                self._one(o.dev or b"", o.reason, o.detail, now)
        if now >= self._scan_at:  # the windows' ends, looked for once a second
            self._scan_at = now + 1.0
            self.flush(now)

    def _one(self, dev: bytes, reason: str, detail: str, now: float) -> None:
        key = (dev, reason)
        s = self.seen.get(key)
        if s is not None:
            s.more += 1
            s.last_detail = detail
            return
        self.seen[key] = _Seen(now)
        while len(self.seen) > self.tracked:
            self.seen.popitem(last=False)
        self._firsts += 1
        if self._firsts > self.firsts_max:
            self._held[reason] += 1
            return
        who = f"meter {dev.hex()}" if dev else "a sender with no valid key id"
        what = "quarantined" if reason == "unknown_meter" else "rejected"
        log.warning("%s: message %s (%s)%s; hint: %s", who, what, reason,
                    f": {detail}" if detail else "", hint(reason))

    def flush(self, now: float | None = None) -> None:
        """The summary lines of the windows that ended."""
        now = self.monotonic() if now is None else now
        if now - self._window >= self.summary_s:
            if self._held:
                log.warning("%d more meters' first refusals not logged in the last %.0f s "
                            "(%s): more than %d new ones", sum(self._held.values()),
                            now - self._window, ", ".join(f"{r} {n}" for r, n in
                                                         sorted(self._held.items())),
                            self.firsts_max)
            self._window, self._firsts, self._held = now, 0, Counter()
        for (dev, reason), s in self.seen.items():
            if now - s.since < self.summary_s:
                continue
            if s.more:
                who = f"meter {dev.hex()}" if dev else "senders with no valid key id"
                log.warning("%s: %d more %s rejection(s) in the last %.0f s (last: %s)", who,
                            s.more, reason, now - s.since, s.last_detail or "-")
            s.since, s.more = now, 0

