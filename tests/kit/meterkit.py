"""Helpers for driving the firmware meter in tests: a scripted source, a fog key, and a
loop that advances a fake clock (the clock is an input of the core, never read by it)."""

from __future__ import annotations

import os
from typing import Any

from core import cose, keys
from core import messages as M
from core.fs import MemFS
from core.meter import Meter
from core.sources import Sample, SourceError

FOG = keys.SigningKey(0xF0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0F0)
T0 = 1_800_000_000  # a multiple of 900


class Clock:
    """A board clock the test advances by hand: Unix seconds and uptime in ms."""

    def __init__(self, t: int) -> None:
        self.t = t
        self.up_ms = 0

    def advance(self, s: int) -> None:
        self.t += s
        self.up_ms += s * 1000


class RecordingTransport:
    """The app's transport interface, recording what the app hands it; tests fill `inbox`
    with ("ack" | "cmd", message) for the next poll()."""

    def __init__(self) -> None:
        self.up = True
        self.births: list[bytes] = []
        self.sent: list[list[bytes]] = []
        self.results: list[bytes] = []
        self.inbox: list[tuple[str, bytes]] = []

    def connect(self, dev_hex: str, birth: bytes) -> bool:
        self.births.append(birth)
        return True

    def connected(self) -> bool:
        return self.up

    def send_readings(self, msgs: list[bytes]) -> bool:
        self.sent.append(list(msgs))
        return True

    def send_result(self, msg: bytes) -> None:
        self.results.append(msg)

    def poll(self) -> list[tuple[str, bytes]]:
        out, self.inbox = self.inbox, []
        return out


class ScriptedSource:
    """Registers rise by `rate` Wh per second; tests can break or rewind it."""

    name = "sim"

    def __init__(self, rate: int = 1) -> None:
        self.rate = rate
        self.imp = 1000
        self.last: int | None = None
        self.fail = False
        self.tamper = False

    def read(self, now: int) -> Sample:
        if self.fail:
            raise SourceError("meter does not answer")
        if self.last is not None and now > self.last:
            self.imp += self.rate * (now - self.last)
        self.last = now
        return Sample(self.imp, 5, 2300, 800, 0, 210, self.tamper)

    def state(self) -> dict[str, Any]:
        return {"imp": self.imp}

    def restore(self, st: dict[str, Any]) -> None:
        self.imp = st.get("imp", self.imp)


def new_meter(fs: Any = None, source: Any = None, fog_pub: bool = True, **kw: Any) -> Meter:
    return Meter(fs if fs is not None else MemFS(), source or ScriptedSource(), os.urandom,
                 FOG.id, FOG.pub if fog_pub else None, **kw)


def run(meter: Meter, start: int, end: int, step: int = 10) -> list[dict[Any, Any]]:
    """Tick from start to end (inclusive); returns the fields of the readings made."""
    out = []
    for now in range(start, end + 1, step):
        msg = meter.tick(now, now - start)
        if msg is not None:
            m = cose.verify(msg, keys.VerifyingKey(meter.key.pub))
            M.check_fields(m.fields)
            out.append(m.fields)
    return out


def ack(meter: Meter, seq: int, digest: bytes | None = None, signer: keys.SigningKey = FOG,
        dev: bytes | None = None) -> bytes:
    if digest is None:
        digest = cose.digest(meter.spool.get(seq))
    return cose.sign1(signer, M.ack(dev or meter.id, seq, digest, T0, signer.id))


def command(meter: Meter, cid: int, op: str, args: dict[int, Any], not_after: int = T0 + 10**6,
            signer: keys.SigningKey = FOG, dev: bytes | None = None) -> bytes:
    return cose.sign1(signer, M.command(dev or meter.id, cid, op, args, not_after, b"", signer.id))
