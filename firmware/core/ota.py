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
# (an RS485 master resumes from there). As soon as the manifest is complete it is checked
# (shape, paths, signature, board, version, free space); only then does the content go
# straight into one staged file per image file (ota/n<i>), nothing is held in RAM but the
# manifest. A refused image takes no more chunks (the count stops), and nothing a chunk
# holds escapes as an exception: it is a refusal, reported at the command.
#
# Nothing is activated by chunks: the fog's type-4 command op "fw" {1: manifest digest}
# makes the meter check the image (verify) and, if it passes, install it and reboot. A
# refusal is the command's result, "<reason>: ...": missing, wrong_image, bad_manifest,
# too_large, no_release_key, forged, wrong_board, downgrade, no_space, truncated, digest,
# busy, failed.
import hashlib
import struct

from core import cose, fwstore
from core.compat import const, hexlify
from core.modbus import Incomplete, cbor_item_end

MANIFEST = const(20)
_SIGNERS = {MANIFEST: 1}  # cose.parse: a manifest is signed by the release key id at key 1
FRAME_HEAD = const(12)  # sid (8) + offset (4)
MAX_FILES = const(64)
MAX_PATH = const(64)
MAX_BYTES = 1 << 20  # default cap on an image's content (config "ota_max_bytes")
RESERVE = 64 * 1024  # free space kept for the spool while an image is staged ("ota_reserve")
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-./"
# the loader's modules (core/fwstore.py's LOADER) in either form: never in an image (main.py
# imports core/fwstore.py through core/__init__.py before the new image's modules)
LOADER_STEMS = ("main", "boot", "core/fwstore", "core/fs", "core/__init__")
RESERVED_DIRS = ("data", "ota")  # first segments an image never writes into


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


def path_error(p, data_name="data"):
    """Why `p` may not be a file of an image, or None. One rule, also fog_node/ota.py's: a
    relative path of non-empty segments (no "." or ".."), of lower-case ASCII letters,
    digits, "_", "-", "." (FAT is case-insensitive), a .py or .mpy module, not the loader's
    (in either form) and not in the meter's data dir (`data_name`) or "ota"."""
    if not isinstance(p, str) or not 0 < len(p) <= MAX_PATH:
        return "a path must be text of 1 to " + str(MAX_PATH) + " characters"
    if any(c not in _PATH_CHARS for c in p):
        return "path " + repr(p) + " must be lower-case letters, digits, _ - . and /"
    segs = p.split("/")
    for seg in segs:
        if seg in ("", ".", ".."):
            return "path " + repr(p) + " is not a plain relative path"
    if p.endswith(".py"):
        stem = p[:-3]
    elif p.endswith(".mpy"):
        stem = p[:-4]
    else:
        return "path " + repr(p) + " is not a module (.py or .mpy)"
    if stem.endswith("/") or not stem:
        return "path " + repr(p) + " has no module name"
    if stem in LOADER_STEMS:
        return p + " belongs to the loader and is never updated over the air"
    if segs[0] in RESERVED_DIRS or segs[0] == data_name:
        return p + " is in the meter's data directory"
    return None


def check_manifest(f, max_bytes=MAX_BYTES, data_name="data"):
    """The manifest's fields, checked; returns [(path, size, sha256)], raises OtaError."""
    if not isinstance(f, dict) or any(not isinstance(k, int) or isinstance(k, bool) for k in f):
        raise OtaError("bad_manifest", "the manifest's keys must be the integers 0..5")
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
        err = path_error(p, data_name)
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


def _fits(f, hw, running):
    if f[3] and f[3] != hw:
        raise OtaError("wrong_board", "image for " + f[3] + ", this is " + hw)
    if not newer(f[2], running):
        raise OtaError("downgrade", f[2] + " is not newer than the running " + str(running))


class Updater:
    """One image session at a time (module doc). `release` is a core.keys.VerifyingKey or
    None (then every image is refused: no_release_key); `running` the running version (an
    image not newer is refused as soon as its manifest is in; the caller keeps it current);
    `data_name` the data dir's name in the firmware's filesystem (never written by an
    image); `reserve` the bytes kept free for the spool when the filesystem tells its free
    space (an optional `free()` of core/fs.py)."""

    def __init__(self, data, release=None, hw="", max_bytes=MAX_BYTES, running=None,
                 data_name="data", reserve=RESERVE):
        self.data = data
        self.release = release
        self.hw = hw
        self.max_bytes = max_bytes
        self.running = running
        self.data_name = data_name
        self.reserve = reserve
        self.refused = 0  # sessions refused while receiving
        self._reset()

    def _reset(self):
        self.sid = None
        self.received = 0
        self.error = None  # an OtaError found while receiving (reported at the command)
        self._buf = bytearray()  # the manifest while it arrives
        self.manifest = None  # its raw bytes once complete
        self.fields = None  # its fields once checked (signature, board, version, space)
        self.files = None
        self.total = 0  # content bytes the manifest lists
        self._cpos = 0  # content bytes received
        self._fi = 0  # the file being written
        self._foff = 0  # bytes of it written

    # --- chunks ----------------------------------------------------------------------------
    def chunk(self, frame):
        """Take one chunk frame; returns the session's received count. Never raises: what a
        chunk provokes is the session's refusal (self.error, counted in self.refused)."""
        try:
            return self._chunk(frame)
        except Exception as e:  # noqa: BLE001  unsigned input must not reset the meter
            if self.error is None:
                if isinstance(e, OtaError):
                    self.error = e
                elif isinstance(e, OSError):
                    self.error = OtaError("failed", "staging: " + str(e))
                else:
                    self.error = OtaError("bad_manifest" if self.fields is None else "failed",
                                          "chunk refused: " + repr(e))
                self.refused += 1
            return self.received

    def _chunk(self, frame):
        if len(frame) < FRAME_HEAD:
            return self.received
        sid = bytes(frame[:8])
        off = struct.unpack(">I", frame[8:FRAME_HEAD])[0]
        if sid != self.sid:
            if off != 0:
                return 0  # not our session: the sender starts again from 0
            self._start(sid)
        if off != self.received or self.error is not None:
            return self.received  # a repeat, a gap (resume at received), or a refused image
        data = memoryview(frame)[FRAME_HEAD:]
        self.received += len(data)
        self._take(data)
        return self.received

    def _start(self, sid):
        self.drop()
        self.sid = sid
        self.data.mkdir(fwstore.DIR)

    def drop(self):
        """Forget the session and its staged files (not the backups of an image on trial)."""
        d = self.data
        self._reset()
        if d.exists(fwstore.DIR):
            for name in d.listdir(fwstore.DIR):
                if name.startswith("n") or name == "manifest":
                    d.remove(fwstore.DIR + "/" + name)

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
            self.manifest = bytes(buf[:end])
            data = memoryview(bytes(buf[end:]))
            self._buf = bytearray()
            self._manifest(self.manifest)
        self._content(data)

    def _manifest(self, raw):
        """The complete manifest, checked before a byte of the files is staged."""
        try:
            m = cose.parse(raw, _SIGNERS)
        except cose.CoseError as e:
            raise OtaError("bad_manifest", e.reason + ": " + str(e))
        if m.type != MANIFEST:
            raise OtaError("bad_manifest", "type " + str(m.type) + " is not a manifest")
        files = check_manifest(m.fields, self.max_bytes, self.data_name)
        if self.release is None:
            raise OtaError("no_release_key", "meter holds no release public key")
        try:
            cose.check_signature(m, self.release)
        except cose.CoseError as e:
            raise OtaError("forged", "manifest not signed by the release key (" + e.reason + ")")
        _fits(m.fields, self.hw, self.running)
        total = sum(n for _, n, _ in files)
        free = getattr(self.data, "free", None)
        room = free() if free is not None else None
        if room is not None and 2 * total + self.reserve > room:
            raise OtaError("no_space", str(total) + " bytes of files need " + str(2 * total)
                           + " + " + str(self.reserve) + " free, the flash has " + str(room))
        self.files = files
        self.total = total
        self.fields = m.fields
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
    def verify(self, digest, running, busy=False):
        """Check the session's image against the authorized manifest digest; returns
        (version, [paths]) ready for fwstore.install, or raises OtaError. `busy`: the
        journal is not "ok" (an image on trial, an install not finished): refused."""
        if busy:
            raise OtaError("busy", "an image is on trial or being installed")
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
        _fits(self.fields, self.hw, running)  # signature and space: checked at the manifest
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
        return self.fields[2], [p for p, _, _ in self.files]
