"""Local faults: what the fog does about a fault it found in an interval's data, and the
`fault` transaction that tells the dispatch chain afterwards (SPEC section 8; docs/PROTOCOL.md
section 18).

The fog acts first and reports after, because a local fault needs no round trip to the
dispatch center. The one local action in v1 is `on_tamper = "relay_off"`: a meter reporting
TAMPER gets a fog-signed relay-off command (through the dispatcher, so it is retried and its
result logged). Every other fault is reported with the action "none".
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from fog_node.chainlink.link import AnchorError
from fog_node.cooking.feeders import Fault
from meterledger.wire import chain as C
from meterledger.wire.cbor import ProtocolError

log = logging.getLogger("fog_node.chainlink.faults")
MAX_ENTRIES = 256  # log indices named in one fault transaction (it must fit 4096 bytes)
TAMPER_HOLD_S = 3600  # how long a relay-off for tamper may still be carried out


class Commander(Protocol):
    def command(self, dev: bytes, op: str, args: dict[int, object], not_after: int,
                ref: bytes = b"") -> int: ...


class Outbox(Protocol):
    def queue_tx(self, kind: str, body: dict[int, object]) -> bytes: ...


class FaultReporter:
    """Acts on faults and queues their `fault` transactions; transactions that cannot be
    queued yet (the link has not met the chain) wait here and are retried on each call."""

    def __init__(self, outbox: Outbox | None, commander: Callable[[], Commander | None],
                 on_tamper: str = "report") -> None:
        self.outbox = outbox
        self.commander = commander
        self.on_tamper = on_tamper
        self.counters: Counter[str] = Counter()
        self._waiting: list[dict[int, object]] = []

    def action(self, f: Fault, now: int) -> str:
        """Carry out the configured local action; returns what was done, for the report."""
        cmd = self.commander()
        if f.kind == "tamper" and self.on_tamper == "relay_off" and cmd is not None and f.devs:
            cids = [cmd.command(dev, "relay", {1: False}, now + TAMPER_HOLD_S) for dev in f.devs]
            self.counters["fault_actions"] += len(cids)
            return (f"relay_off: relay-off commands to {len(cids)} meter(s): "
                    + ", ".join(f"{d.hex()} cid {c}" for d, c in zip(f.devs, cids, strict=True)))
        return "none: reported for dispatch to decide"

    def __call__(self, f: Fault, now: int) -> None:
        done = self.action(f, now)
        entries = list(f.entries[:MAX_ENTRIES])
        more = f" (first {MAX_ENTRIES} of {len(f.entries)} entries)" if len(f.entries) > MAX_ENTRIES else ""
        body = C.fault_body(f.kind, f"feeder {f.feeder}, interval {f.ivl}: {f.detail}{more}", now,
                            done, entries)
        self._waiting.append(body)
        self.counters["faults"] += 1
        self.flush()

    def flush(self) -> int:
        """Queue waiting fault transactions; returns how many were queued."""
        if self.outbox is None:
            self._waiting.clear()  # no chain configured: the alert is all there is
            return 0
        queued = 0
        while self._waiting:
            try:
                self.outbox.queue_tx(C.FAULT, self._waiting[0])
            except AnchorError as e:  # no first contact with the chain yet: retry later
                log.info("fault transaction waits: %s", e)
                break
            except ProtocolError as e:  # a body the chain would refuse: resending cannot help
                log.error("fault transaction dropped: %s", e)
                self.counters["fault_txs_dropped"] += 1
            else:
                queued += 1
            self._waiting.pop(0)
        self.counters["fault_txs_queued"] += queued
        return queued
