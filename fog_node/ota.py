"""Signed firmware images and their delivery to meters (docs/PROTOCOL.md section 22).

An image is a manifest followed by the files' contents, in the manifest's order. The
manifest is a COSE_Sign1 (SPEC section 3) of type 20 signed by the release key, whose public
key each meter holds from provisioning (config `release_pub`, `tools.flash --release-pub`):

    {0: 20, 1: release key id, 2: version "1.2.3", 3: board ("" = any),
     4: [[path, size, sha256], ...], 5: t}

`tools.ota build` writes an unsigned image (the bare payload map in place of the COSE
message), `tools.ota sign` signs it. The fog does not need the release key: it checks an
image's shape, never its signature; the meter checks everything (core/ota.py).

Delivery (`OtaPusher`, run by the ingest thread of fog_node.service): an operator's image
(POST /v1/firmware, queued in data_dir/ota/queue) goes to the meter in chunk frames
`sid (8) | offset (u32 BE) | bytes` (sid: the first 8 bytes of the manifest's digest): on
MQTT all at once to {root}/f/{fog}/fw/{dev} (QoS 1, 1024 bytes each), on RS485 through the
bus master (function 0x45, 200 bytes each, a few per visit, resuming where the meter says).
Then a fog-signed type-4 command op "fw" {1: manifest digest} authorizes it: the meter
answers with a type-5 result, "activating ..." or the reason it refused. The job's state is
data_dir/ota/jobs/<dev>.json (GET /v1/firmware).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fog_node.node import FogError, FogNode
from meterledger import wire as P
from meterledger.infra.sqlite import atomic, connect
from meterledger.wire.cbor import CBORError, Tag, item_end

log = logging.getLogger("fog_node.ota")

MANIFEST = 20
LOADER = ("main.py", "boot.py", "core/fwstore.py", "core/fs.py")  # never in an image
LOADER_STEMS = ("main", "boot", "core/fwstore", "core/fs")  # ... in either form, .py or .mpy
RESERVED_DIRS = ("data", "ota")  # the meter's data dir (default name) and its staging
MAX_PATH = 64
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-./")
MQTT_CHUNK = 1024
RS485_CHUNK = 200  # 8 + 4 + 200 bytes of data: an ADU of 216
COMMAND_TTL_S = 86400  # the "fw" command's not_after, from when it is sent
MAX_FILES = 64
SCAN_MAX = 10_000  # log entries looked at per tick for results
STALLS = 3  # RS485 answers in a row that did not advance: the transfer is given up
DIR = "ota"
_CIDS = "CREATE TABLE IF NOT EXISTS cids (dev BLOB PRIMARY KEY, cid INTEGER NOT NULL)"


class ImageError(FogError, ValueError):
    """Not an image (or not a signed one where one is needed); the message says why."""


@dataclass
class Image:
    head: bytes  # the signed manifest message, or the bare payload (unsigned)
    content: bytes
    fields: dict[int, Any]
    signed: bool

    @property
    def blob(self) -> bytes:
        return self.head + self.content

    @property
    def digest(self) -> bytes:
        """The manifest's digest (SPEC section 3): what the "fw" command authorizes."""
        return P.digest(self.head)

    @property
    def sid(self) -> bytes:
        return self.digest[:8]

    @property
    def version(self) -> str:
        return str(self.fields[2])

    @property
    def files(self) -> list[tuple[str, int, bytes]]:
        return [(str(p), int(n), bytes(h)) for p, n, h in self.fields[4]]

    def file_errors(self) -> list[str]:
        """Files whose bytes do not match their manifest sha256."""
        out, pos = [], 0
        for path, n, h in self.files:
            if hashlib.sha256(self.content[pos:pos + n]).digest() != h:
                out.append(path)
            pos += n
        return out


def _version_ok(v: Any) -> bool:
    parts = v.split(".") if isinstance(v, str) else []
    return 0 < len(parts) <= 4 and all(p.isascii() and p.isdigit() and len(p) <= 6
                                       for p in parts)


def is_loader(path: str) -> bool:
    """A loader module (main, boot, core/fwstore, core/fs) in either form."""
    stem, dot, ext = path.rpartition(".")
    return bool(dot) and ext in ("py", "mpy") and stem.lower() in LOADER_STEMS


def path_error(p: Any) -> str | None:
    """Why `p` may not be a file of an image, or None: the meter's rule (core/ota.py
    path_error) for a meter whose data dir is the default "data"."""
    if not isinstance(p, str) or not 0 < len(p) <= MAX_PATH:
        return f"a path must be text of 1 to {MAX_PATH} characters"
    if not set(p) <= _PATH_CHARS:
        return f"path {p!r} must be lower-case letters, digits, _ - . and /"
    segs = p.split("/")
    if any(seg in ("", ".", "..") for seg in segs):
        return f"path {p!r} is not a plain relative path"
    stem, dot, ext = p.rpartition(".")
    if not dot or ext not in ("py", "mpy"):
        return f"path {p!r} is not a module (.py or .mpy)"
    if not stem or stem.endswith("/"):
        return f"path {p!r} has no module name"
    if stem in LOADER_STEMS:
        return f"{p} belongs to the loader and is never updated over the air"
    if segs[0] in RESERVED_DIRS:
        return f"{p} is in the meter's data directory"
    return None


def check_manifest(f: Any) -> None:
    """The manifest's shape, as the meter checks it (core/ota.py check_manifest)."""
    if not isinstance(f, dict) or any(type(k) is not int for k in f):
        raise ImageError("a manifest's keys are the integers 0..5")
    if sorted(f) != [0, 1, 2, 3, 4, 5] or f[0] != MANIFEST:
        raise ImageError("a manifest is a type-20 map with exactly the keys 0..5")
    if not isinstance(f[1], bytes) or len(f[1]) != 8:
        raise ImageError("manifest key 1 (the release key id) must be 8 bytes")
    if not _version_ok(f[2]):
        raise ImageError(f"version {f[2]!r} must be 1 to 4 dot-separated numbers")
    if not isinstance(f[3], str) or len(f[3]) > 32:
        raise ImageError("board must be text of at most 32 characters")
    files = f[4]
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise ImageError(f"an image lists 1 to {MAX_FILES} files")
    seen: set[str] = set()
    for e in files:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                and isinstance(e[1], int) and e[1] >= 0 and isinstance(e[2], bytes)
                and len(e[2]) == 32):
            raise ImageError("a file entry is [path, size, sha256]")
        p = e[0]
        err = path_error(p)
        if err is not None:
            raise ImageError(err)
        if p in seen:
            raise ImageError(f"file {p!r} is listed twice")
        seen.add(p)


def manifest_fields(version: str, files: Sequence[tuple[str, bytes]], release: bytes,
                    board: str = "", t: int | None = None) -> dict[int, Any]:
    f = {0: MANIFEST, 1: release, 2: version, 3: board,
         4: [[p, len(b), hashlib.sha256(b).digest()] for p, b in files],
         5: int(time.time()) if t is None else t}
    check_manifest(f)
    return f


def build(version: str, files: Sequence[tuple[str, bytes]], board: str = "",
          t: int | None = None) -> bytes:
    """An unsigned image of (path, bytes) files; the release id is filled in by sign()."""
    f = manifest_fields(version, files, bytes(8), board, t)
    return P.encode(f) + b"".join(b for _, b in files)


def sign(data: bytes, key: P.SigningKey) -> bytes:
    """The image with its manifest signed by `key` (re-signed if it was signed)."""
    img = parse_image(data)
    f = dict(img.fields)
    f[1] = key.id
    payload = P.encode(f)
    head = P.sign1_encoded(key, payload)
    if len(head) > P.MAX_MESSAGE:
        raise ImageError(f"the manifest is {len(head)} bytes, more than {P.MAX_MESSAGE}")
    return head + img.content


def _item_end(data: bytes) -> int:
    """Where the manifest (the image's first CBOR item) ends."""
    try:
        return item_end(data, 0, (18,))
    except CBORError as e:
        raise ImageError(f"not an image: the manifest does not decode: {e}") from None


def parse_image(data: bytes) -> Image:
    """Split and check an image (signed or not); ImageError says what is wrong."""
    if not data:
        raise ImageError("empty image")
    end = _item_end(data)
    head, content = data[:end], data[end:]
    signed = head[:1] == b"\xd2"
    try:
        if signed:
            m = P.decode(head, tags=(18,))
            if not isinstance(m, Tag) or not isinstance(m.value, list) or len(m.value) != 4:
                raise ImageError("the manifest is not a COSE_Sign1")
            fields = P.decode(m.value[2])
            if m.value[1] != {4: fields.get(1) if isinstance(fields, dict) else None}:
                raise ImageError("the manifest's kid is not its release key id (key 1)")
        else:
            fields = P.decode(head)
    except CBORError as e:
        raise ImageError(f"the manifest does not decode: {e}") from None
    check_manifest(fields)
    total = sum(int(n) for _, n, _ in fields[4])
    if len(content) != total:
        raise ImageError(f"the files take {len(content)} bytes, the manifest lists {total}")
    return Image(head, content, fields, signed)


def verify(img: Image, release: P.PublicKey) -> None:
    """The meter's signature check, on the host (tools.ota inspect): ES256 by `release`,
    low-S, over the manifest's payload (SPEC section 3's Sig_structure)."""
    if not img.signed:
        raise ImageError("the image is not signed (tools.ota sign)")
    env = P.decode(img.head, tags=(18,)).value
    protected, unprotected, payload, sig = env
    if protected != P.PROTECTED or unprotected != {4: release.id}:
        raise ImageError(f"the manifest is not signed by release key {release.id_hex}")
    if not isinstance(sig, bytes) or len(sig) != 64 or int.from_bytes(sig[32:], "big") > P.HALF_N \
            or not release.verify(sig, P.to_be_signed(payload)):
        raise ImageError(f"the manifest's signature does not verify with release key "
                         f"{release.id_hex}")


@dataclass
class FwTransfer:
    """An image on its way to one meter over RS485 (the bus master's side): the next chunk
    frame, and where the meter's answers say it is."""

    dev: bytes
    sid: bytes
    blob: bytes
    size: int
    pos: int = 0
    stalls: int = 0  # answers in a row that did not advance

    def __post_init__(self) -> None:
        if not 1 <= self.size <= 240 or len(self.sid) != 8:
            raise ValueError("a firmware chunk is an 8-byte sid, a u32 offset and 1..240 bytes")

    @property
    def left(self) -> int:
        return len(self.blob) - self.pos

    def frame(self) -> bytes:
        return self.sid + self.pos.to_bytes(4, "big") + self.blob[self.pos:self.pos + self.size]

    def taken(self, received: int) -> int:
        """The meter's answer (its received count); 1 if it advanced, else 0. After
        STALLS answers in a row that did not, the transfer is given up."""
        advanced = received > self.pos
        self.stalls = 0 if advanced else self.stalls + 1
        self.pos = min(received, len(self.blob))
        if self.stalls >= STALLS:
            self.give_up(f"it stopped taking chunks at {self.pos} of {len(self.blob)} bytes")
        return int(advanced)

    def give_up(self, why: str) -> None:
        log.warning("firmware for meter %s over RS485 given up: %s", self.dev.hex(), why)
        self.pos = len(self.blob)


def chunks(img: Image, size: int) -> list[bytes]:
    blob = img.blob
    return [img.sid + pos.to_bytes(4, "big") + blob[pos:pos + size]
            for pos in range(0, len(blob), size)]


# -- delivery ---------------------------------------------------------------------------------
def queue_push(data_dir: Path, dev: bytes, data: bytes) -> Image:
    """Hand an image for meter `dev` to the running node (checked, then written beside and
    renamed into data_dir/ota/queue); returns it parsed."""
    img = parse_image(data)
    if not img.signed:
        raise ImageError("the image is not signed (python -m tools.ota sign)")
    d = data_dir / DIR / "queue"
    d.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}-{dev.hex()}.img"
    (d / (name + ".tmp")).write_bytes(data)
    os.replace(d / (name + ".tmp"), d / name)
    return img


def job_path(data_dir: Path, dev: bytes) -> Path:
    return data_dir / DIR / "jobs" / f"{dev.hex()}.json"


def read_job(data_dir: Path, dev: bytes) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(job_path(data_dir, dev).read_text())
    except (OSError, ValueError):
        return None
    return doc


Publish = Callable[[list[tuple[str, bytes, int, bool]]], None]


@dataclass
class _Job:
    doc: dict[str, Any]
    scanned: int  # log entries looked at for the result
    dev: bytes = field(default=b"")


class OtaPusher:
    """Queued images -> chunks and a "fw" command -> the meter's result (module doc).
    `publish` is the MQTT link's; `bus` the RS485 master (None without one); `send_command`
    the service's (MQTT, and the bus when the meter answers there)."""

    def __init__(self, node: FogNode, publish: Publish, bus: Any,
                 send_command: Callable[[bytes, bytes], None],
                 clock: Callable[[], float]) -> None:
        self.node = node
        self.publish = publish
        self.bus = bus
        self.send_command = send_command
        self.clock = clock
        self.root = node.config.mqtt_root
        self.data_dir: Path = node.config.data_dir
        self.jobs: dict[bytes, _Job] = {}

    def tick(self) -> None:
        """Start the queued pushes, look for the results of the open ones."""
        d = self.data_dir / DIR / "queue"
        if d.is_dir():
            for path in sorted(d.glob("*.img")):
                try:
                    dev = bytes.fromhex(path.stem.rsplit("-", 1)[1])
                    self.push(dev, path.read_bytes())
                except (ValueError, OSError, FogError) as e:
                    log.error("firmware push %s refused: %s", path.name, e)
                path.unlink()
        for dev, job in list(self.jobs.items()):
            self._result(dev, job)

    def push(self, dev: bytes, data: bytes) -> dict[str, Any]:
        """Send an image to meter `dev` now; returns the job's record."""
        img = parse_image(data)
        if not img.signed:
            raise ImageError("the image is not signed")
        with self.node.lock:
            device = self.node.registry.device(dev)
            size = self.node.log.size()
        if device is None or not device.active:
            raise ImageError(f"meter {dev.hex()} is not an active meter of this fog")
        now = int(self.clock())
        cid = self._next_cid(dev)
        key = self.node.key
        cmd = P.sign1(key, P.command(dev, cid, "fw", {1: img.digest}, now + COMMAND_TTL_S, b"",
                                     key.id))
        via = ["mqtt"]
        pre = f"{self.root}/f/{self.node.id_hex}/fw/{dev.hex()}"
        self.publish([(pre, c, 1, False) for c in chunks(img, MQTT_CHUNK)])
        bus = self.bus
        if bus is not None and bus.knows(dev):
            bus.queue_firmware(dev, img.sid, img.blob, RS485_CHUNK)
            via.append("rs485")
        with self.node.lock:  # the side-chain holds what the fog commanded (SPEC section 7)
            self.node.log.append_batch([cmd])
            self.node.registry.record_readings([], self.node.log.size())
        self.send_command(dev, cmd)
        doc = {"dev": dev.hex(), "version": img.version, "digest": img.digest.hex(),
               "bytes": len(img.blob), "files": len(img.files), "cid": cid, "via": via,
               "state": "sent", "status": None, "detail": "", "sent_at": now}
        self.jobs[dev] = _Job(doc, size, dev)
        self._save(dev, doc)
        log.info("firmware %s (%d bytes) sent to meter %s over %s, command cid %d",
                 img.version, len(img.blob), dev.hex(), "+".join(via), cid)
        return doc

    def _next_cid(self, dev: bytes) -> int:
        """The meter's next cid, from the same table as the dispatcher's (chain.db cids), so
        the two never hand out one cid twice."""
        db = connect(self.data_dir / "chain.db", wal=False)
        try:
            db.execute(_CIDS)
            with atomic(db):
                row = db.execute("SELECT cid FROM cids WHERE dev = ?", (dev,)).fetchone()
                cid = (int(row[0]) if row else 0) + 1
                db.execute("INSERT INTO cids (dev, cid) VALUES (?, ?) ON CONFLICT(dev) DO "
                           "UPDATE SET cid = excluded.cid", (dev, cid))
        finally:
            db.close()
        return cid

    def _result(self, dev: bytes, job: _Job) -> None:
        with self.node.lock:
            size = self.node.log.size()
            end = min(size, job.scanned + SCAN_MAX)
            entries = [self.node.log.entry(i) for i in range(job.scanned, end)]
        job.scanned = end
        for raw in entries:
            try:
                m = P.parse(raw, schema=False)
            except P.ProtocolError:
                continue
            if m.type != P.RESULT or m.kid != dev or m.fields[2] != job.doc["cid"]:
                continue
            status, detail = int(m.fields[3]), str(m.fields[4])
            job.doc.update(status=status, detail=detail,
                           state={P.RESULT_DONE: "done", P.RESULT_REJECTED: "rejected"}
                           .get(status, "failed"))
            self._save(dev, job.doc)
            del self.jobs[dev]
            say = log.info if status == P.RESULT_DONE else log.warning
            say("firmware %s for meter %s: %s", job.doc["version"], dev.hex(), detail)
            return

    def _save(self, dev: bytes, doc: dict[str, Any]) -> None:
        p = job_path(self.data_dir, dev)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, p)
