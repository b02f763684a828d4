# Small records that survive a power loss at any instant.
#
# save() writes path + ".tmp" as one frame, then renames it onto path. The frame is
#   magic (4) | payload length u32 | payload | crc32(length + payload) u32
# so a torn file (any prefix of the frame) is always detected: it is either too short
# for its own length field or fails the CRC.
#
# load() picks the newest complete payload. A complete tmp is newer than path: it was
# written in full and only the rename is missing (on FAT the fs removes dst before the
# rename, so "path missing, tmp complete" is a normal state after a power loss). The
# rename is finished on load so the next save starts from a clean slate. Torn tmp
# files are removed. A torn payload is never returned.
import binascii
import struct

from core.compat import const

_MAGIC = b"MLr1"
_HDR = const(8)  # magic + length
_TRAILER = const(4)  # crc32


def encode(payload):
    n = len(payload)
    head = _MAGIC + struct.pack("<I", n)
    crc = binascii.crc32(payload, binascii.crc32(head[4:])) & 0xFFFFFFFF
    return head + payload + struct.pack("<I", crc)


def decode(data):
    """Payload of a complete frame, or None if the frame is torn or corrupt."""
    if len(data) < _HDR + _TRAILER or data[:4] != _MAGIC:
        return None
    n = struct.unpack("<I", data[4:8])[0]
    # exact size: a longer file is not something save() wrote
    if len(data) != _HDR + n + _TRAILER:
        return None
    mv = memoryview(data)
    crc = binascii.crc32(mv[_HDR : _HDR + n], binascii.crc32(mv[4:8])) & 0xFFFFFFFF
    if struct.unpack("<I", data[_HDR + n :])[0] != crc:
        return None
    return bytes(mv[_HDR : _HDR + n])


def save(fs, path, payload):
    tmp = path + ".tmp"
    fs.write(tmp, encode(payload))
    fs.rename(tmp, path)


def _read(fs, path):
    try:
        return fs.read(path)
    except OSError:
        return None


def load(fs, path):
    """Newest complete payload saved at path, or None. Repairs an interrupted save."""
    tmp = path + ".tmp"
    if fs.exists(tmp):
        data = _read(fs, tmp)
        payload = decode(data) if data is not None else None
        if payload is not None:
            fs.rename(tmp, path)  # roll the interrupted save forward
            return payload
        fs.remove(tmp)  # torn: the save never completed, path still holds the old value
    data = _read(fs, path)
    if data is None:
        return None
    return decode(data)


def remove(fs, path):
    """Delete a record and any leftover tmp (missing files are fine)."""
    for p in (path + ".tmp", path):
        if fs.exists(p):
            fs.remove(p)
