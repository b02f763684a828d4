"""Signed-but-hostile messages through the fog: validly signed messages of every type (and
unknown ones) with hostile field values, alone or batched, fed to `Ingest.process` of a real
fog node (SQLite files in a temp dir), then the cooker's tick, interval closes and a
checkpoint seal, as the scheduler runs them. Ingest promises that rejections never raise:
anything raising here is a finding."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fog_node.config import FogConfig
from fog_node.cooking.feeders import Feeder
from fog_node.node import FogNode
from meterledger import wire as P
from tools.fuzz import seeds
from tools.fuzz.base import Draw, Target
from tools.fuzz.chain import mutate

_TYPES = (*seeds.templates(), 7, 9, 99, 2**63 - 1)
_KEYS = (seeds.METER, seeds.METER, seeds.METER2, seeds.STRANGER, seeds.FOG)


class _Fog:
    """One fog node for the process (its databases grow over the run), and its clock."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="meterledger-fuzz-fog-"))
        atexit.register(shutil.rmtree, self.dir, True)
        (self.dir / "fog.key").write_text(seeds.FOG.private_bytes().hex())
        feeders = [Feeder("feeder-a", (seeds.METER.id, seeds.METER2.id), seeds.METER.id)]
        self.now = seeds.T0
        self.node = FogNode(FogConfig(data_dir=self.dir, feeders=feeders,
                                      privacy_min_meters=1), lambda: self.now)
        for key in (seeds.METER, seeds.METER2):
            self.node.ingest.decide(key.public_key.raw, "active", "")
        self.closed: set[int] = set()


_fog: _Fog | None = None
# an input of this prefix is a CBOR array of payloads, fed as they are (regression inputs
# keep the exact messages of a finding this way)
RAW = b"MLR1"


def setup() -> None:
    global _fog
    if _fog is None:
        _fog = _Fog()


def reset() -> None:
    """A fresh fog node: a finding may leave the databases in a state every later input
    trips over, and a regression input must not depend on the inputs before it."""
    global _fog
    if _fog is not None:
        _fog.node.close()
        shutil.rmtree(_fog.dir, ignore_errors=True)
    _fog = _Fog()


def _fields(d: Draw, key: P.SigningKey) -> dict[Any, Any]:
    t = d.choice(_TYPES)
    f = dict(seeds.templates().get(t, seeds.templates()[P.READING]))
    f[0] = t
    if t in P.SIGNER_FIELD:
        f[P.SIGNER_FIELD[t]] = key.id
    if f[0] == P.BIRTH:
        f[10] = key.public_key.raw
    if f[0] == P.READING:  # seqs near the logged ones reach the chain and duplicate checks
        f[2] = d.choice((1, 2, 3, 4, 5, 1000, f[2]))
        f[3] = seeds.T0 + 900 * (f[2] - 1) if f[2] < 10**6 else f[3]
    return mutate(d, f, 4)


def hostile_payload(d: Draw) -> tuple[bytes, bytes | None]:
    """One MQTT payload (a message, or a batch of 1..3) and the meter id of its topic."""
    items = []
    first: P.SigningKey | None = None
    for _ in range(1 + (d.below(3) if d.below(4) == 0 else 0)):
        key = d.choice(_KEYS)
        first = first or key
        try:
            items.append(P.sign1(key, _fields(d, key), check=False))
        except P.ProtocolError:  # CBOR cannot carry the value: nothing a meter could send
            items.append(d.take(d.below(40)))
    payload = items[0] if len(items) == 1 else bytes((0x80 | len(items),)) + b"".join(items)
    topic = d.choice((None, first.id if first else None, seeds.METER.id))
    return payload, topic


def ingest(data: bytes) -> None:
    """Hostile signed messages through Ingest.process, then tick, close and seal."""
    setup()
    assert _fog is not None
    fog, node, d = _fog, _fog.node, Draw(data)
    payloads: list[bytes] = []
    topics: list[bytes | None] = []
    if data.startswith(RAW):
        try:
            raw = P.decode(data[len(RAW):])
        except P.ProtocolError:
            return
        payloads = [p for p in raw if isinstance(p, bytes)] if isinstance(raw, list) else []
        topics = [None] * len(payloads)
        fog.now += 3600
    else:
        fog.now += d.choice((0, 1, 60, 900, -5))
        for _ in range(1 + d.below(4)):
            payload, topic = hostile_payload(d)
            payloads.append(payload)
            topics.append(topic)
    with node.lock:
        node.ingest.process(payloads, topics if d.bool() else None)

        def seal() -> None:
            node.checkpoints.seal(fog.now, force=True)

        ivl = fog.now - fog.now % 900 - 900
        if d.below(8) == 0 and ivl not in fog.closed:
            fog.closed.add(ivl)
            closed = node.cooker.close(ivl, fog.now, seal)
            node.checkpoints.seal(fog.now, ivl=ivl, agg=closed.agg)
        else:
            node.cooker.tick(fog.now, seal)
            node.checkpoints.seal(fog.now)


def _seeds() -> list[bytes]:
    return [bytes((0, 0, i, 0, 0, 0)) for i in range(12)] + [b"\x01" * 20, b"\x03" * 40]


TARGETS = [
    Target("ingest", "validly signed hostile messages of every type through Ingest.process "
           "over SQLite, then the cooker and a checkpoint seal", ingest, _seeds, setup=setup,
           reset=reset, known=(("ValueError", "after.t must be later than before.t"),)),
]
