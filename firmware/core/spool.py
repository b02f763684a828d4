"""Store-and-forward spool: signed readings stay on flash until the fog acknowledges them.

Layout under `dirname/`:
  sNNNNNNNN.seg  segment: up to `per_segment` consecutive seqs, named by its first seq.
                 Saved with core.atomic (frame + crc, write tmp then rename), holding
                 records  seq u32 | len u16 | message | crc32(seq, len, message)
  acked          core.atomic record: u32 watermark, the highest seq the fog confirmed.

Why segments: one file per reading would cost one 4 KiB LittleFS block each (2880 readings
= 11 MiB, more than an ESP32 has), while 16-record segments cost ~180 blocks for 30 days.

Flash budget (15-minute readings, messages ~170-200 B):
  per reading   message + 10 B record overhead               ~180-210 B
  per segment   16 records + 12 B atomic frame                ~2.8-3.3 KiB
                -> rounds up to ONE 4 KiB LittleFS block (16 records of up to 245 B fit)
  30 days       2880 readings = 180 segments = 180 blocks      = 720 KiB
  capacity      3072 readings (32 days) = 192 blocks           = 768 KiB
                + 1 block while the active segment is rewritten (tmp + old copy)
                + a few metadata blocks for the directory; `acked` is 16 B
  ESP32, 4 MiB flash: the MicroPython default "vfs" partition is 2 MiB (512 blocks), so a
  full spool takes ~38% of it and leaves ~1.2 MiB for code, keys and state.
  (A Pico W has only 848 KiB of filesystem: lower `capacity` there, e.g. 2048 = 21 days.)
  Each append rewrites the active segment: one block program per reading, ~96 a day,
  spread by LittleFS wear levelling over the free blocks.

When full (len >= capacity) append() raises SpoolFull and writes nothing. The caller then
makes no new reading and consumes no seq; its next reading, once an ack frees space,
carries flag SKIPPED and its registers (cumulative energy) cover the gap, so energy is
never lost, only resolution.
"""

import binascii
import struct

from core import atomic
from core.compat import const

_REC_HDR = const(6)  # seq u32 + len u16
_REC_CRC = const(4)
_MAX_MSG = const(4096)
# A segment is read whole into RAM on append/get; cap its size so that rare large
# messages cannot make it 16 x 4 KiB on a ~100 KB heap.
_SEG_MAX = const(8192)


class SpoolFull(Exception):
    pass


def _record(seq, msg):
    head = struct.pack("<IH", seq, len(msg))
    crc = binascii.crc32(msg, binascii.crc32(head)) & 0xFFFFFFFF
    return head + msg + struct.pack("<I", crc)


def _records(payload):
    """(seq, offset, length) of each valid record; stops at the first bad one."""
    out = []
    mv = memoryview(payload)
    off = 0
    end = len(payload)
    while off + _REC_HDR + _REC_CRC <= end:
        seq, n = struct.unpack("<IH", payload[off : off + _REC_HDR])
        stop = off + _REC_HDR + n
        if stop + _REC_CRC > end:
            break
        crc = binascii.crc32(mv[off + _REC_HDR : stop], binascii.crc32(mv[off : off + _REC_HDR]))
        if struct.unpack("<I", payload[stop : stop + _REC_CRC])[0] != crc & 0xFFFFFFFF:
            break
        out.append((seq, off + _REC_HDR, n))
        off = stop + _REC_CRC
    return out


class Spool:
    def __init__(self, fs, dirname="spool", per_segment=16, capacity=3072):
        self.fs = fs
        self.dir = dirname
        self.per_segment = per_segment
        self.capacity = capacity
        self.acked = 0
        # In-RAM index only: [first_seq, last_seq, valid_payload_bytes] per segment, ascending.
        # Messages stay on flash.
        self._segs = []
        self.stats = {"appended": 0, "dropped": 0, "recovered_torn": 0, "full_rejections": 0}

    # -- paths ---------------------------------------------------------------------------

    def _path(self, first):
        return "%s/s%08d.seg" % (self.dir, first)

    def _acked_path(self):
        return self.dir + "/acked"

    def _payload(self, first):
        data = self.fs.read(self._path(first))
        payload = atomic.decode(data)
        if payload is None:
            raise OSError(5, "corrupt segment " + self._path(first))
        return payload

    # -- boot ----------------------------------------------------------------------------

    def recover(self):
        """Repair interrupted writes/drops and rebuild the index. Call once at boot."""
        fs = self.fs
        fs.mkdir(self.dir)
        ap = self._acked_path()
        if fs.exists(ap + ".tmp"):
            self.stats["recovered_torn"] += 1
        raw = atomic.load(fs, ap)
        self.acked = struct.unpack("<I", raw)[0] if raw is not None and len(raw) == 4 else 0

        firsts = []
        for name in fs.listdir(self.dir):
            if name.startswith("s") and (name.endswith(".seg") or name.endswith(".seg.tmp")):
                try:
                    first = int(name[1 : name.index(".")])
                except ValueError:
                    continue
                if first not in firsts:
                    firsts.append(first)
        firsts.sort()

        segs = []
        for first in firsts:
            path = self._path(first)
            if fs.exists(path + ".tmp"):
                self.stats["recovered_torn"] += 1
            payload = atomic.load(fs, path)  # finishes or discards an interrupted append
            recs = _records(payload) if payload is not None else []
            ok = len(recs) > 0
            for i in range(len(recs)):
                if recs[i][0] != first + i:
                    ok = False
            if not ok:
                # Never written by us in this shape (a new segment whose first save was
                # torn leaves no file at all): unreadable, drop it rather than serve it.
                if fs.exists(path):
                    fs.remove(path)
                continue
            last = recs[-1][0]
            if last <= self.acked:
                fs.remove(path)  # a drop_through was cut short after persisting `acked`
                continue
            # valid length: a record corrupted on flash ends the segment, and the next
            # append must go right after the last good record, not behind the bad one
            segs.append([first, last, recs[-1][1] + recs[-1][2] + _REC_CRC])
        self._segs = segs

    # -- queries -------------------------------------------------------------------------

    def __len__(self):
        n = 0
        for first, last, _ in self._segs:
            if last > self.acked:
                n += last - max(first - 1, self.acked)
        return n

    def full(self):
        return len(self) >= self.capacity

    def _last_seq(self):
        return self._segs[-1][1] if self._segs else 0

    def _find(self, seq):
        for s in self._segs:
            if s[0] <= seq <= s[1]:
                return s
        return None

    def _msg(self, seg, seq):
        payload = self._payload(seg[0])
        for rs, off, n in _records(payload):
            if rs == seq:
                return payload[off : off + n]
        return None

    def last(self):
        """(seq, msg) of the highest seq still on flash (acked or not), or None."""
        if not self._segs:
            return None
        seg = self._segs[-1]
        return seg[1], self._msg(seg, seg[1])

    def get(self, seq):
        """Message of an un-acked stored seq, else None."""
        if seq <= self.acked:
            return None
        seg = self._find(seq)
        return self._msg(seg, seq) if seg is not None else None

    def pending(self, after_seq=0, limit=32):
        """Up to `limit` (seq, msg), ascending, with seq > max(after_seq, acked)."""
        lo = max(after_seq, self.acked)
        out = []
        for seg in self._segs:
            if len(out) >= limit:
                break
            if seg[1] <= lo:
                continue
            payload = self._payload(seg[0])
            for rs, off, n in _records(payload):
                if rs > lo:
                    out.append((rs, payload[off : off + n]))
                    if len(out) >= limit:
                        break
        return out

    # -- mutations -----------------------------------------------------------------------

    def append(self, seq, msg):
        """Store reading `seq`; durable when this returns."""
        if not isinstance(msg, bytes):
            msg = bytes(msg)
        if len(msg) > _MAX_MSG:
            raise ValueError("message too long")
        last = self._last_seq()
        if self._segs:
            ok = seq == last + 1
        else:
            ok = seq > self.acked and seq >= 1  # empty spool: any fresh start above the ack
        if not ok or seq > 0xFFFFFFFF:
            raise ValueError("seq %d is not next (last %d, acked %d)" % (seq, last, self.acked))
        if len(self) >= self.capacity:
            self.stats["full_rejections"] += 1
            raise SpoolFull()
        rec = _record(seq, msg)
        seg = self._segs[-1] if self._segs else None
        if (
            seg is not None
            and seg[1] - seg[0] + 1 < self.per_segment
            and seg[2] + len(rec) <= _SEG_MAX
        ):
            payload = self._payload(seg[0])
            if len(payload) != seg[2]:
                payload = payload[: seg[2]]
            payload += rec
            atomic.save(self.fs, self._path(seg[0]), payload)  # old or new, never half
            seg[1] = seq
            seg[2] = len(payload)
        else:
            atomic.save(self.fs, self._path(seq), rec)
            self._segs.append([seq, seq, len(rec)])
        self.stats["appended"] += 1

    def drop_through(self, seq):
        """Acknowledge everything <= seq; returns how many readings were dropped."""
        if seq <= self.acked:
            return 0  # never backwards; a repeated ack is harmless
        if seq > self._last_seq():
            raise ValueError("ack %d beyond last stored seq %d" % (seq, self._last_seq()))
        before = len(self)
        # Persist the watermark first: if power fails while deleting, recover() finishes
        # the deletions. Deleting first would, after a power cut before the save, serve the
        # acked head of a partly acked segment again behind a hole in the seqs.
        atomic.save(self.fs, self._acked_path(), struct.pack("<I", seq))
        self.acked = seq
        while self._segs and self._segs[0][1] <= seq:
            self.fs.remove(self._path(self._segs[0][0]))
            self._segs.pop(0)
        dropped = before - len(self)
        self.stats["dropped"] += dropped
        return dropped
