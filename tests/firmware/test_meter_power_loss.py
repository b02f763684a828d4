"""Power loss at every flash operation of a working meter (boot, readings, acks).

After each cut the meter reboots on what the flash holds, and must: never reuse a seq
(one seq, one message), keep every reading it had stored and not seen acknowledged,
link the next reading's prev to the real previous message, and keep measuring.
"""

from __future__ import annotations

from typing import Any

import pytest

from core import cose
from core.fs import MemFS
from tests.kit.faultfs import FaultFS, PowerLoss, variants
from tests.kit.meterkit import T0, ScriptedSource, ack, new_meter


def scenario(fs: Any, log: dict[int, bytes], acked: list[int]) -> None:
    """Boot, close 5 intervals, ack the first 3 midway. Records what left the meter."""
    m = new_meter(fs, ScriptedSource(), per_segment=2)
    m.boot(T0 - 5, True)
    for now in range(T0 - 5, T0 + 4 * 900 + 1, 5):
        msg = m.tick(now, now - T0)
        if msg is not None:
            seq = cose.parse(msg).fields[2]
            log[seq] = msg
        if now == T0 + 2 * 900 + 5:
            a = ack(m, 3)
            acked.append(3)  # the fog has it durably once it acks, even if we die mid-drop
            m.handle_ack(a)


def count_ops() -> list[tuple[str, str]]:
    f = FaultFS(MemFS())
    scenario(f, {}, [])
    return f.ops


OPS = count_ops()
POINTS = [(i, kind, kw) for i, (kind, _) in enumerate(OPS) for kw in variants(kind)]


def test_the_scenario_touches_flash_often_enough_to_matter():
    kinds = {k for k, _ in OPS}
    assert {"write", "rename"} <= kinds and "remove" in kinds
    assert len(POINTS) > 150


@pytest.mark.parametrize("i,kind,kw", POINTS, ids=[f"{i}-{k}-{next(iter(kw.values()))}" for i, k, kw in POINTS])
def test_power_cut_at_every_flash_operation(i: int, kind: str, kw: dict[str, Any]):
    inner = MemFS()
    log: dict[int, bytes] = {}
    acked: list[int] = []
    with pytest.raises(PowerLoss):
        scenario(FaultFS(inner, fail_at=i, **kw), log, acked)
    # reboot on whatever the flash holds
    m = new_meter(inner, ScriptedSource(), per_segment=2)
    m.boot(T0 + 5000, True, "power")
    held = dict(m.spool.pending(0, 1000))
    for seq, msg in held.items():  # one seq, one message: nothing stored differs from what left
        if seq in log:
            assert log[seq] == msg, f"seq {seq} changed across the power cut"
    for seq, msg in log.items():  # every reading produced and not acked is still there
        if not acked or seq > acked[0]:
            assert held.get(seq) == msg, f"reading {seq} lost"
    seqs = sorted(held)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
    # the meter goes on: next seq follows the highest one ever made, prev links to it
    top = max([m.st["seq"], *log]) if log else m.st["seq"]
    nxt = None
    for now in range(T0 + 5000, T0 + 6400, 5):
        nxt = m.tick(now, now) or nxt
        if nxt:
            break
    assert nxt is not None
    f = cose.parse(nxt).fields
    assert f[2] == top + 1
    if top:
        prev_msg = log.get(top) or held.get(top) or m.spool.get(top)
        assert prev_msg is not None and f[8] == cose.digest(prev_msg)
