"""Power loss at every mutating flash operation of the spool and of core/atomic.py.

A scripted scenario runs once on a clean MemFS to record its mutating operations. Then,
for EVERY operation index and every way that operation can be cut (torn write prefixes,
rename done / not done / FAT half-done, remove done / not done), the scenario is re-run
with FaultFS cutting the power there, the device "reboots" (fresh Spool on the inner fs +
recover()) and the durability guarantees are checked. A second power cut during that
recovery is injected too, at every operation the recovery itself performs.
"""

from dataclasses import dataclass, field
from typing import Any

import pytest

from core import atomic
from core.fs import MemFS, VfsFS
from core.spool import Spool
from tests.kit.faultfs import FaultFS, PowerLoss, torn_length, variants

PER_SEG = 4


def msg_of(seq: int) -> bytes:
    # sizes vary so torn prefixes land on different record boundaries
    return (b"<reading %d>" % seq) * (1 + seq % 5) + bytes([seq % 256])


# 40 appends crossing segment boundaries, acks inside a segment, across several segments,
# of everything (spool empties, next append starts a new segment), repeated acks and
# clean reboots in between.
SCRIPT: list[tuple[str, int]] = []
for _s in range(1, 41):
    SCRIPT.append(("append", _s))
    if _s == 6:
        SCRIPT.append(("ack", 3))
    elif _s == 13:
        SCRIPT.append(("ack", 9))
    elif _s == 20:
        SCRIPT.append(("ack", 20))
    elif _s == 22:
        SCRIPT.append(("reboot", 0))
    elif _s == 27:
        SCRIPT += [("ack", 26), ("ack", 24)]
    elif _s == 31:
        SCRIPT.append(("reboot", 0))
    elif _s == 35:
        SCRIPT.append(("ack", 34))
SCRIPT.append(("ack", 38))


@dataclass
class Progress:
    """What the firmware has been told: only returned calls count as durable."""

    durable: dict[int, bytes] = field(default_factory=dict)
    acked_done: int = 0
    inflight_append: tuple[int, bytes] | None = None
    inflight_ack: int | None = None


def run_script(fs: Any) -> tuple[Progress, bool]:
    prog = Progress()
    try:
        sp = Spool(fs, per_segment=PER_SEG)
        sp.recover()
        for op, n in SCRIPT:
            if op == "append":
                prog.inflight_append = (n, msg_of(n))
                sp.append(n, msg_of(n))
                prog.durable[n] = msg_of(n)
                prog.inflight_append = None
            elif op == "ack":
                prog.inflight_ack = n
                sp.drop_through(n)
                prog.acked_done = max(prog.acked_done, n)
                prog.inflight_ack = None
            else:
                sp = Spool(fs, per_segment=PER_SEG)
                sp.recover()
    except PowerLoss:
        return prog, True
    return prog, False


def clone(mem: MemFS) -> MemFS:
    c = MemFS()
    c.files = dict(mem.files)
    c.dirs = set(mem.dirs)
    return c


def check_after_reboot(fs: Any, prog: Progress) -> None:
    sp = Spool(fs, per_segment=PER_SEG)
    sp.recover()
    names = fs.listdir("spool")
    assert not [n for n in names if n.endswith(".tmp")], names

    # the watermark: a completed ack holds, an interrupted one is all-or-nothing
    allowed_acked = {prog.acked_done}
    if prog.inflight_ack is not None:
        allowed_acked.add(max(prog.acked_done, prog.inflight_ack))
    assert sp.acked in allowed_acked

    allowed = dict(prog.durable)
    if prog.inflight_append is not None:
        allowed[prog.inflight_append[0]] = prog.inflight_append[1]

    pend = sp.pending(limit=10**6)
    seqs = [s for s, _ in pend]
    assert len(set(seqs)) == len(seqs)
    if seqs:  # strictly increasing and gap-free from acked+1
        assert seqs == list(range(sp.acked + 1, seqs[-1] + 1))
    for s, m in pend:
        assert s in allowed and m == allowed[s]  # byte-identical, nothing invented
    for s in prog.durable:  # no loss of a returned append unless acked
        if s > sp.acked:
            assert s in seqs, s
    assert len(sp) == len(pend)
    for s, m in pend:
        assert sp.get(s) == m
    # nothing fully acked lingers; the index matches the flash
    segs = sorted(n for n in names if n.endswith(".seg"))
    assert segs == [f"s{seg[0]:08d}.seg" for seg in sp._segs]
    assert all(seg[1] > sp.acked for seg in sp._segs)

    # boot-time reconciliation: the meter continues right after the newest reading
    last = sp.last()
    if last is not None:
        assert last[0] in allowed and last[1] == allowed[last[0]]
        if seqs:
            assert last[0] == seqs[-1]
    top = max(last[0] if last is not None else 0, sp.acked)
    newest = max(prog.durable, default=0)
    if prog.inflight_append is not None and prog.inflight_append[0] in seqs:
        newest = prog.inflight_append[0]
    assert top == max(newest, sp.acked, prog.acked_done)

    nxt = top + 1
    sp.append(nxt, msg_of(nxt))
    again = Spool(fs, per_segment=PER_SEG)
    again.recover()
    assert again.pending(limit=10**6) == [*pend, (nxt, msg_of(nxt))]
    assert again.acked == sp.acked


def recording_run() -> tuple[list[tuple[str, str]], MemFS, Progress]:
    inner = MemFS()
    rec = FaultFS(inner)
    prog, cut = run_script(rec)
    assert not cut
    return rec.ops, inner, prog


def fault_points() -> list[tuple[int, str, str, dict[str, Any]]]:
    ops, _, _ = recording_run()
    points = []
    for i, (kind, path) in enumerate(ops):
        for kw in variants(kind):
            points.append((i, kind, path, kw))
    return points


def test_scenario_without_faults():
    ops, inner, prog = recording_run()
    kinds = {k for k, _ in ops}
    assert kinds == {"write", "rename", "remove", "mkdir"}
    assert len(prog.durable) == 40 and prog.acked_done == 38
    check_after_reboot(inner, prog)


@pytest.fixture(scope="module")
def points():
    return fault_points()


def test_every_fault_point(points):
    """One test over all points (thousands of parametrized ids would dwarf the suite)."""
    failures: list[tuple[Any, ...]] = []
    nested = 0
    for i, kind, path, kw in points:
        inner = MemFS()
        prog, cut = run_script(FaultFS(inner, fail_at=i, **kw))
        assert cut, (i, kind, path)
        try:
            check_after_reboot(clone(inner), prog)
        except AssertionError as e:
            failures.append((i, kind, path, kw, repr(e)))
            continue
        # a second power cut while recovering, at each operation the recovery performs
        probe = FaultFS(clone(inner))
        Spool(probe, per_segment=PER_SEG).recover()
        for j, (kind2, _) in enumerate(probe.ops):
            for kw2 in variants(kind2):
                flash = clone(inner)
                with pytest.raises(PowerLoss):
                    Spool(FaultFS(flash, fail_at=j, **kw2), per_segment=PER_SEG).recover()
                nested += 1
                try:
                    check_after_reboot(flash, prog)
                except AssertionError as e:
                    failures.append((i, kind, path, kw, "recovery", j, kw2, repr(e)))
    assert not failures, f"{len(failures)} failing fault points, first: {failures[:3]!r}"
    # the figure quoted in the docs: every op index x every variant, plus nested cuts
    assert len(points) > 300 and nested > 100


def test_fault_point_count_covers_every_operation(points):
    ops, _, _ = recording_run()
    assert sorted({p[0] for p in points}) == list(range(len(ops)))
    assert len({p[0] for p in points}) == len(ops)


def test_power_loss_on_real_filesystem(tmp_path):
    # a sample of the points on VfsFS (fsync'd POSIX files) so the wrapper is not MemFS-only
    for n, (i, _kind, _, kw) in enumerate(fault_points()[::23]):
        root = tmp_path / f"f{n}"
        prog, cut = run_script(FaultFS(VfsFS(str(root)), fail_at=i, **kw))
        assert cut
        check_after_reboot(VfsFS(str(root)), prog)


# -- core/atomic.py ----------------------------------------------------------------------

VALUES = [b"first value", b"", b"a much longer third value " * 9, b"4th"]


def atomic_script(fs: Any) -> tuple[int, int | None]:
    """Returns (last completed value index, in-flight index or None)."""
    done = -1
    try:
        for k, v in enumerate(VALUES):
            atomic.save(fs, "state", v)
            done = k
    except PowerLoss:
        return done, done + 1
    return done, None


def test_atomic_every_write_step():
    rec = FaultFS(MemFS())
    atomic_script(rec)
    ops = rec.ops
    assert [k for k, _ in ops] == ["write", "rename"] * len(VALUES)
    checked = 0
    for i, (kind, _) in enumerate(ops):
        for kw in variants(kind):
            inner = MemFS()
            done, inflight = atomic_script(FaultFS(inner, fail_at=i, **kw))
            assert inflight is not None
            ok = {VALUES[done] if done >= 0 else None, VALUES[inflight]}
            # a power cut inside load()'s repair, then a clean load
            probe = FaultFS(clone(inner))
            first = atomic.load(probe, "state")
            assert first in ok
            for j, (kind2, _) in enumerate(probe.ops):
                for kw2 in variants(kind2):
                    flash = clone(inner)
                    with pytest.raises(PowerLoss):
                        atomic.load(FaultFS(flash, fail_at=j, **kw2), "state")
                    assert atomic.load(flash, "state") == first
            got = atomic.load(inner, "state")
            assert got == first
            assert not inner.exists("state.tmp")
            assert atomic.load(inner, "state") == got  # stable after repair
            # a completed save is never lost and a torn one never shows
            if done >= 0:
                assert got is not None
            atomic.save(inner, "state", b"next")
            assert atomic.load(inner, "state") == b"next"
            checked += 1
    assert checked == 4 * len(variants("write")) + 4 * len(variants("rename"))


def test_faultfs_torn_lengths_and_dead_device():
    assert [torn_length(10, t) for t in (False, 0, 1, True, -1, 1 << 30)] == [
        None,
        0,
        1,
        5,
        9,
        10,
    ]
    inner = MemFS()
    inner.write("old", b"x")
    ffs = FaultFS(inner, fail_at=1, torn=-1)
    ffs.write("a", b"abcd")
    with pytest.raises(PowerLoss):
        ffs.write("b", b"abcd")
    assert inner.read("b") == b"abc"
    for call in (lambda: ffs.read("a"), lambda: ffs.exists("a"), lambda: ffs.remove("a")):
        with pytest.raises(PowerLoss):
            call()
    fat = FaultFS(inner, fail_at=0, done="fat")
    with pytest.raises(PowerLoss):
        fat.rename("a", "old")
    assert not inner.exists("old") and inner.read("a") == b"abcd"
