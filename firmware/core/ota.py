# Signed firmware updates, the meter's side (docs/PROTOCOL.md section 22). Pure: the data
# filesystem, the release key and the running version are passed in; core/fwstore.py puts
# a verified image in place and takes it back.
#
# An image is one byte string: a manifest (a COSE_Sign1 of type 20, signed by the release
# key pinned at provisioning) followed by the files' contents in the manifest's order:
#   {0: 20, 1: release key id (8 bytes), 2: version "1.2.3", 3: board ("" = any),
#    4: [[path, size, sha256], ...], 5: t}
# It arrives in chunks, each `sid (8) | offset (u32 BE) | bytes`, sid = the first 8 bytes of
# the manifest's digest (MQTT topic .../fw/<dev>; RS485 function 0x45). Chunks are taken in
# order: offset 0 of a new sid starts a session (the previous staging is dropped), a chunk at
# the received count extends it, anything else is ignored; the answer is the count received
# (an RS485 master resumes from there). The content goes straight into one staged file per
# image file (ota/n<i>), nothing is held in RAM but the manifest.
#
# Nothing is activated by chunks: the fog's type-4 command op "fw" {1: manifest digest}
# makes the meter check the image (verify) and, if it passes, install it and reboot. A
# refusal is the command's result, "<reason>: ...": missing, wrong_image, bad_manifest,
# too_large, no_release_key, forged, wrong_board, downgrade, truncated, digest, busy.
import hashlib
import struct

from core import cose, fwstore
from core.compat import const, hexlify
from core.modbus import Incomplete, cbor_item_end

MANIFEST = const(20)
FRAME_HEAD = const(12)  # sid (8) + offset (4)
MAX_FILES = const(64)
MAX_PATH = const(64)
MAX_BYTES = 1 << 20  # default cap on an image's content (config "ota_max_bytes")
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./"


class OtaError(ValueError):
    def __init__(self, reason, text):
        super().__init__(reason + ": " + text)
        self.reason = reason


def parse_version(v):
    """(1, 2, 3) from "1.2.3" (1 to 4 numbers), or None."""
    if not isinstance(v, str) or not 0 < len(v) <= 32:
        return None
    parts = v.split(".")
    if len(parts) > 4:
        return None
    out = []
    for p in parts:
        if not p or len(p) > 6 or any(c not in "0123456789" for c in p):
            return None
        out.append(int(p))
    return tuple(out)


def newer(version, running):
    """Whether `version` is strictly newer than `running` (an unparsable running version
    counts as 0)."""
    a = parse_version(version)
    b = parse_version(running) or (0,)
    a = list(a) + [0] * (4 - len(a))
    b = list(b) + [0] * (4 - len(b))
    return a > b


def _path_error(p):
    if not isinstance(p, str) or not 0 < len(p) <= MAX_PATH:
        return "a path must be text of 1 to " + str(MAX_PATH) + " characters"
    if any(c not in _PATH_CHARS for c in p) or p.startswith("/") or ".." in p or "//" in p:
        return "path " + repr(p) + " is not a plain relative path"
    if not (p.endswith(".py") or p.endswith(".mpy")):
        return "path " + repr(p) + " is not a module (.py or .mpy)"
    if p in fwstore.LOADER:
        return p + " belongs to the loader and is never updated over the air"
    return None


def check_manifest(f, max_bytes=MAX_BYTES):
    """The manifest's fields, checked; returns [(path, size, sha256)], raises OtaError."""
    if sorted(f.keys()) != [0, 1, 2, 3, 4, 5]:
        raise OtaError("bad_manifest", "the manifest must have exactly the keys 0..5")
    if f[0] != MANIFEST or not isinstance(f[1], bytes) or len(f[1]) != 8:
        raise OtaError("bad_manifest", "not a type-20 manifest with an 8-byte signer")
    if parse_version(f[2]) is None:
        raise OtaError("bad_manifest", "version must be 1 to 4 dot-separated numbers")
    if not isinstance(f[3], str) or len(f[3]) > 32:
        raise OtaError("bad_manifest", "board must be text of at most 32 characters")
    if not isinstance(f[5], int) or isinstance(f[5], bool) or f[5] < 0:
        raise OtaError("bad_manifest", "t must be an unsigned integer")
    files = f[4]
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise OtaError("bad_manifest", "files must list 1 to " + str(MAX_FILES) + " files")
    out = []
    seen = []
    total = 0
    for e in files:
        if not isinstance(e, list) or len(e) != 3:
            raise OtaError("bad_manifest", "a file entry is [path, size, sha256]")
        p, n, h = e
        err = _path_error(p)
        if err:
            raise OtaError("bad_manifest", err)
        if p in seen:
            raise OtaError("bad_manifest", p + " is listed twice")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise OtaError("bad_manifest", p + ": size must be an unsigned integer")
        if not isinstance(h, bytes) or len(h) != 32:
            raise OtaError("bad_manifest", p + ": sha256 must be 32 bytes")
        seen.append(p)
        total += n
        out.append((p, n, h))
    if total > max_bytes:
        raise OtaError("too_large", str(total) + " bytes of files, more than " + str(max_bytes))
    return out


class Updater:
    """One image session at a time (module doc). `release` is a core.keys.VerifyingKey or
    None (then every image is refused: no_release_key)."""

    def __init__(self, data, release=None, hw="", max_bytes=MAX_BYTES):
        self.data = data
        self.release = release
        self.hw = hw
        self.max_bytes = max_bytes
        self.sid = None
        self.received = 0
        self.error = None  # an OtaError found while receiving (reported at the command)
        self._buf = bytearray()  # the manifest while it arrives
        self.manifest = None  # its raw bytes once complete
        self.fields = None
        self.files = None
        self.total = 0  # content bytes the manifest lists
        self._cpos = 0  # content bytes received
        self._fi = 0  # the file being written
        self._foff = 0  # bytes of it written

    # --- chunks ----------------------------------------------------------------------------
    def chunk(self, frame):
        """Take one chunk frame; returns the session's received count."""
        if len(frame) < FRAME_HEAD:
            return self.received
        sid = bytes(frame[:8])
        off = struct.unpack(">I", frame[8:FRAME_HEAD])[0]
        if sid != self.sid:
            if off != 0:
                return 0  # not our session: the sender starts again from 0
            self._start(sid)
        if off != self.received:
            return self.received  # a repeat, or a gap: the sender resumes at received
        data = memoryview(frame)[FRAME_HEAD:]
        self.received += len(data)
        if self.error is None:
            try:
                self._take(data)
            except OtaError as e:
                self.error = e
            except OSError as e:
                self.error = OtaError("failed", "staging: " + str(e))
        return self.received

    def _start(self, sid):
        self.drop()
        self.sid = sid
        self.data.mkdir(fwstore.DIR)

    def drop(self):
        """Forget the session and its staged files (not the backups of an image on trial)."""
        d = self.data
        if d.exists(fwstore.DIR):
            for name in d.listdir(fwstore.DIR):
                if name.startswith("n") or name == "manifest":
                    d.remove(fwstore.DIR + "/" + name)
        self.__init__(self.data, self.release, self.hw, self.max_bytes)

    def _take(self, data):
        if self.manifest is None:
            buf = self._buf
            buf.extend(data)
            try:
                end = cbor_item_end(buf, 0)
            except Incomplete:
                if len(buf) > cose.MAX_MESSAGE:
                    raise OtaError("bad_manifest", "no manifest in the first "
                                   + str(cose.MAX_MESSAGE) + " bytes")
                return
            except ValueError as e:
                raise OtaError("bad_manifest", str(e))
            self._manifest(bytes(buf[:end]))
            data = memoryview(bytes(buf[end:]))
            self._buf = bytearray()
        self._content(data)

    def _manifest(self, raw):
        try:
            m = cose.parse(raw)
        except cose.CoseError as e:
            raise OtaError("bad_manifest", e.reason + ": " + str(e))
        if m.type != MANIFEST:
            raise OtaError("bad_manifest", "type " + str(m.type) + " is not a manifest")
        self.files = check_manifest(m.fields, self.max_bytes)
        self.fields = m.fields
        self.manifest = raw
        self.total = sum(n for _, n, _ in self.files)
        self.data.write(fwstore.DIR + "/manifest", raw)

    def _content(self, data):
        files = self.files
        if self._cpos + len(data) > self.total:
            raise OtaError("too_large", "more bytes than the manifest lists ("
                           + str(self.total) + ")")
        self._cpos += len(data)
        while len(data):
            while self._fi < len(files) and self._foff >= files[self._fi][1]:
                self._fi += 1
                self._foff = 0
            name = fwstore.DIR + "/n" + str(self._fi)
            k = files[self._fi][1] - self._foff
            part = data[:k]
            self.data.append(name, bytes(part))
            self._foff += len(part)
            data = data[len(part):]

    # --- the fog's "fw" command ------------------------------------------------------------
    def verify(self, digest, running, on_trial=False):
        """Check the session's image against the authorized manifest digest; returns
        (version, [paths]) ready for fwstore.install, or raises OtaError."""
        if on_trial:
            raise OtaError("busy", "the running image is on trial until the fog acks it")
        if self.sid is None:
            raise OtaError("missing", "no image received")
        if self.manifest is None and self.error is None:
            raise OtaError("truncated", "received " + str(self.received)
                           + " bytes, the manifest is incomplete")
        if self.manifest is not None and cose.digest(self.manifest) != digest:
            raise OtaError("wrong_image", "received manifest " + hexlify(cose.digest(self.manifest)[:8])
                           + ", not the authorized " + hexlify(digest[:8]))
        if self.error is not None:
            raise self.error
        f = self.fields
        if self.release is None:
            raise OtaError("no_release_key", "meter holds no release public key")
        try:
            cose.check_signature(cose.parse(self.manifest), self.release)
        except cose.CoseError as e:
            raise OtaError("forged", "manifest not signed by the release key (" + e.reason + ")")
        if f[3] and f[3] != self.hw:
            raise OtaError("wrong_board", "image for " + f[3] + ", this is " + self.hw)
        if not newer(f[2], running):
            raise OtaError("downgrade", f[2] + " is not newer than the running " + str(running))
        if self._cpos < self.total:
            raise OtaError("truncated", "received " + str(self._cpos) + " of " + str(self.total)
                           + " bytes of files")
        for i, (p, n, h) in enumerate(self.files):
            name = fwstore.DIR + "/n" + str(i)
            if n == 0:
                self.data.write(name, b"")  # an empty file got no chunk
            got = hashlib.sha256(self.data.read(name)).digest()
            if got != h:
                raise OtaError("digest", p + " does not match its manifest sha256")
        return f[2], [p for p, _, _ in self.files]
