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
for an active meter (POST /v1/firmware, queued in data_dir/ota/queue) goes to the meter in
chunk frames `sid (8) | offset (u32 BE) | bytes` (sid: the manifest digest's first 8 bytes):
on MQTT all at once to {root}/f/{fog}/fw/{dev} (QoS 1, 1024 bytes each, once the link takes
them), on RS485 through the bus master (function 0x45, 200 bytes each, a few per visit,
resuming where the meter says). Then a fog-signed type-4 command op "fw" {1: manifest
digest} authorizes it: the meter answers with a type-5 result ("activating ..." or why it
refused), reboots, and its next birth says which version runs. Jobs (queued, sent,
activating, then done, rejected, failed or rolled_back) are kept in data_dir/ota/jobs.db
(GET /v1/firmware); a restarted node takes up the open ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fog_node.broker_access import MAX_QUEUED
from fog_node.node import FogError, FogNode
from fog_node.registry import ACTIVE
from meterledger import errors
from meterledger import wire as P
from meterledger.infra.sqlite import atomic, connect
from meterledger.wire.cbor import CBORError, Tag, item_end

log = logging.getLogger("fog_node.ota")

MANIFEST = 20
# the loader (firmware/main.py and what it imports first) in either form: never in an image
LOADER_STEMS = ("main", "boot", "core/fwstore", "core/fs", "core/__init__")
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
# mosquitto drops what a client's queue cannot hold (max_queued_messages): the fog's broker
# fragment sets BROKER_QUEUE, an image takes at most MQTT_MAX_CHUNKS of it (section 22)
BROKER_QUEUE = MAX_QUEUED
MQTT_MAX_CHUNKS = BROKER_QUEUE - 1024  # 3 MiB of image in 1024-byte chunks
RETRY_S = 5.0  # a push the MQTT link did not take is handed over again after this long
JOBS_DB = "jobs.db"
OPEN = ("queued", "sent", "activating")  # job states that wait for something
REPLAY = "(a replay of the accepted command)"  # core/meter.py's answer to a command again
_JOBS = ("CREATE TABLE IF NOT EXISTS jobs (dev BLOB PRIMARY KEY, doc TEXT NOT NULL, "
         "image BLOB, cmd BLOB, scanned INTEGER NOT NULL)")
COUNTERS: Counter[str] = Counter()  # pushes refused: refused_not_enrolled
_COUNT_LOCK = threading.Lock()


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


def _version_ok(v: Any) -> bool:
    parts = v.split(".") if isinstance(v, str) else []
    return 0 < len(parts) <= 4 and all(p.isascii() and p.isdigit() and len(p) <= 6
                                       for p in parts)


def is_loader(path: str) -> bool:
    """A loader module (main, boot, core/fwstore, core/fs, core/__init__) in either form."""
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
    if type(f[5]) is not int or f[5] < 0:  # type(): a bool is an int to isinstance
        raise ImageError("manifest key 5 (t) must be an unsigned integer")
    files = f[4]
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise ImageError(f"an image lists 1 to {MAX_FILES} files")
    seen: set[str] = set()
    for e in files:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                and type(e[1]) is int and e[1] >= 0 and isinstance(e[2], bytes)
                and len(e[2]) == 32):
            raise ImageError("a file entry is [path, size, sha256]")
        p = e[0]
        err = path_error(p)
        if err is not None:
            raise ImageError(err)
        if p in seen:
            raise ImageError(f"file {p!r} is listed twice")
        seen.add(p)


def build(version: str, files: Sequence[tuple[str, bytes]], board: str = "",
          t: int | None = None) -> bytes:
    """An unsigned image of (path, bytes) files; the release id is filled in by sign()."""
    f = {0: MANIFEST, 1: bytes(8), 2: version, 3: board,
         4: [[p, len(b), hashlib.sha256(b).digest()] for p, b in files],
         5: int(time.time()) if t is None else t}
    check_manifest(f)
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
class NotEnrolledError(ImageError, errors.NotFoundError):
    """A push for a meter that is not an active meter of this fog: refused before anything
    is queued (an ImageError, so the HTTP API answers 400 with the reason)."""


def _refuse(dev: bytes, why: str) -> NotEnrolledError:
    with _COUNT_LOCK:
        COUNTERS["refused_not_enrolled"] += 1
    log.warning("firmware push for meter %s refused: %s", dev.hex(), why)
    return NotEnrolledError(f"meter {dev.hex()} {why}: enroll it first (firmware goes only to "
                            "active meters of this fog)")


def check_push(img: Image) -> None:
    """What a push needs beyond a well-formed image: signed, and few enough MQTT chunks for
    a meter's broker queue (MQTT_MAX_CHUNKS, docs/PROTOCOL.md section 22)."""
    if not img.signed:
        raise ImageError("the image is not signed (python -m tools.ota sign)")
    n = -(-len(img.blob) // MQTT_CHUNK)
    if n > MQTT_MAX_CHUNKS:
        raise ImageError(f"the image takes {n} MQTT chunks of {MQTT_CHUNK} bytes, more than the "
                         f"{MQTT_MAX_CHUNKS} a meter's broker queue holds while it is away "
                         f"(max_queued_messages {BROKER_QUEUE})")


def queue_push(data_dir: Path, dev: bytes, data: bytes) -> Image:
    """Hand an image for meter `dev` to the running node (checked, then written beside and
    renamed into data_dir/ota/queue); returns it parsed. NotEnrolledError (counted) unless
    the node's registry holds `dev` as active."""
    img = parse_image(data)
    check_push(img)
    row = _row(data_dir / "registry.db", "SELECT status FROM devices WHERE dev = ?", dev)
    if row is None or row[0] != ACTIVE:
        raise _refuse(dev, "is not enrolled" if row is None else f"is {row[0]}")
    d = data_dir / DIR / "queue"
    d.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}-{dev.hex()}.img"
    (d / (name + ".tmp")).write_bytes(data)
    os.replace(d / (name + ".tmp"), d / name)
    return img


def _jobs_db(data_dir: Path) -> sqlite3.Connection:
    (data_dir / DIR).mkdir(parents=True, exist_ok=True)
    db = connect(data_dir / DIR / JOBS_DB)
    db.execute(_JOBS)
    return db


def _row(path: Path, sql: str, dev: bytes) -> Any:
    """One row of a database of the node (None if it, or its table, is not there yet)."""
    if not path.exists():
        return None
    db = connect(path, wal=False)
    try:
        return db.execute(sql, (dev,)).fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" not in str(e):
            raise
        return None
    finally:
        db.close()


def read_job(data_dir: Path, dev: bytes) -> dict[str, Any] | None:
    """The last push to meter `dev` (its record, as GET /v1/firmware shows it), or None."""
    row = _row(data_dir / DIR / JOBS_DB, "SELECT doc FROM jobs WHERE dev = ?", dev)
    doc: dict[str, Any] | None = json.loads(row[0]) if row else None
    return doc


Publish = Callable[[list[tuple[str, bytes, int, bool]]], "bool | None"]


@dataclass
class _Job:
    dev: bytes
    doc: dict[str, Any]
    img: Image
    scanned: int  # log entries looked at for the result and the birth
    cmd: bytes | None = None  # the signed "fw" command, once sent
    saved_scan: int = 0
    retry_at: float = 0.0  # when a push waiting for the MQTT link tries again
    rebus: bool = False  # resumed after a restart: queue it on the bus again


class OtaPusher:
    """Queued images -> chunks and a "fw" command -> the meter's result -> its next birth
    (module doc). `publish` is the MQTT link's (False: not handed to a live connection;
    True or None: handed); `bus` the RS485 master (None without one); `send_command` the
    service's (MQTT, and the bus when the meter answers there). Jobs live in
    data_dir/ota/jobs.db: a restarted node takes up the open ones."""

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
        self.db = _jobs_db(self.data_dir)
        self.jobs: dict[bytes, _Job] = {}
        for dev, doc, image, cmd, scanned in self.db.execute(
                "SELECT dev, doc, image, cmd, scanned FROM jobs").fetchall():
            d = json.loads(doc)
            if d["state"] not in OPEN or image is None:
                continue
            job = _Job(bytes(dev), d, parse_image(image), scanned, cmd, scanned)
            job.rebus = d["state"] == "sent" and "rs485" in d["via"]
            self.jobs[job.dev] = job
            log.warning("firmware %s for meter %s: taken up again after a restart (%s)",
                        d["version"], job.dev.hex(), d["state"])

    def tick(self) -> None:
        """Start the queued pushes, hand over the waiting ones, follow the open ones."""
        d = self.data_dir / DIR / "queue"
        if d.is_dir():
            for path in sorted(d.glob("*.img")):
                try:
                    dev = bytes.fromhex(path.stem.rsplit("-", 1)[1])
                    self.push(dev, path.read_bytes())
                except (ValueError, OSError, FogError) as e:
                    log.error("firmware push %s refused: %s", path.name, e)
                path.unlink()
        for job in list(self.jobs.values()):
            if job.doc["state"] == "queued":
                self._deliver(job)
            else:
                self._rebus(job)
                self._follow(job)

    def push(self, dev: bytes, data: bytes) -> dict[str, Any]:
        """Send an image to meter `dev` (now if the link takes it, else when it does);
        returns the job's record."""
        img = parse_image(data)
        check_push(img)
        with self.node.lock:
            device = self.node.registry.device(dev)
            size = self.node.log.size()
        if device is None or not device.active:
            raise _refuse(dev, "is not enrolled" if device is None else f"is {device.status}")
        old = self.jobs.get(dev)
        if old is not None:
            log.warning("firmware %s for meter %s (%s) replaced by %s", old.doc["version"],
                        dev.hex(), old.doc["state"], img.version)
        doc = {"dev": dev.hex(), "version": img.version, "digest": img.digest.hex(),
               "bytes": len(img.blob), "files": len(img.files), "cid": None, "via": [],
               "state": "queued", "status": None, "detail": "", "running": None,
               "queued_at": int(self.clock()), "sent_at": None}
        job = self.jobs[dev] = _Job(dev, doc, img, size, saved_scan=size)
        self._save(job)
        self._deliver(job)
        return doc

    def _deliver(self, job: _Job) -> None:
        """Hand the chunks to the MQTT link (and the bus), then send the command. While the
        link does not take them and the bus does not know the meter, the job waits."""
        now = self.clock()
        if now < job.retry_at:
            return
        dev, img, bus = job.dev, job.img, self.bus
        on_bus = bus is not None and bus.knows(dev)
        pre = f"{self.root}/f/{self.node.id_hex}/fw/{dev.hex()}"
        handed = self.publish([(pre, c, 1, False) for c in chunks(img, MQTT_CHUNK)]) is not False
        if not handed and not on_bus:
            if not job.retry_at:
                log.warning("firmware %s for meter %s waits: the MQTT link does not take it",
                            img.version, dev.hex())
            job.retry_at = now + RETRY_S
            return
        if on_bus:
            bus.queue_firmware(dev, img.sid, img.blob, RS485_CHUNK)
        cid = self._next_cid(dev)
        key = self.node.key
        cmd = P.sign1(key, P.command(dev, cid, "fw", {1: img.digest}, int(now) + COMMAND_TTL_S,
                                     b"", key.id))
        with self.node.lock:  # the side-chain holds what the fog commanded (SPEC section 7)
            self.node.log.append_batch([cmd])
            self.node.registry.record_readings([], self.node.log.size())
        self.send_command(dev, cmd)
        job.cmd = cmd
        via = (["mqtt"] if handed else []) + (["rs485"] if on_bus else [])
        job.doc.update(cid=cid, via=via, state="sent", sent_at=int(now))
        self._save(job)
        log.info("firmware %s (%d bytes) sent to meter %s over %s, command cid %d",
                 img.version, len(img.blob), dev.hex(), "+".join(via), cid)

    def _rebus(self, job: _Job) -> None:
        """After a restart, an RS485 transfer the master forgot starts again."""
        bus = self.bus
        if not job.rebus or job.cmd is None or bus is None or not bus.knows(job.dev):
            return
        job.rebus = False
        bus.queue_firmware(job.dev, job.img.sid, job.img.blob, RS485_CHUNK)
        if not bus.has_command(job.dev, job.cmd):
            bus.queue_command(job.dev, job.cmd)

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

    def _follow(self, job: _Job) -> None:
        """The meter's result to the command, then its next birth: the new version is
        "done", another one after "activating" is "rolled_back"."""
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
            if m.kid == job.dev and self._saw(job, m):
                return
        if job.doc["state"] == "activating" and "rs485" in job.doc["via"]:
            # the master reads a birth only after a silence, which a quick reboot may not
            # leave: at each visit until the new one is logged (the old one is a duplicate)
            for slot in getattr(self.bus, "slots", ()):
                if slot.dev == job.dev:
                    slot.need_birth = True
        if job.scanned - job.saved_scan >= SCAN_MAX:
            self._save(job)

    def _saw(self, job: _Job, m: P.Message) -> bool:
        """One of the meter's log entries; True once the job is closed."""
        doc, f = job.doc, m.fields
        if m.type == P.RESULT and doc["state"] == "sent" and f[2] == doc["cid"]:
            detail = str(f[4])
            if REPLAY in detail:  # the copy on the other link: the first answer counts
                return False
            status = int(f[3])
            doc.update(status=status, detail=detail, state="activating"
                       if status == P.RESULT_DONE else "rejected"
                       if status == P.RESULT_REJECTED else "failed")
            say = log.info if status == P.RESULT_DONE else log.warning
            say("firmware %s for meter %s: %s", doc["version"], job.dev.hex(), detail)
        elif m.type == P.BIRTH and doc["state"] in ("sent", "activating"):
            running = str(f.get(11, ""))
            if running == doc["version"]:
                doc.update(state="done", running=running)
                log.info("meter %s runs firmware %s", job.dev.hex(), running)
            elif doc["state"] == "activating":  # it never started, or crashed: rolled back
                doc.update(state="rolled_back", running=running)
                log.warning("meter %s activated firmware %s but is back on %s: rolled back "
                            "(its console says why)", job.dev.hex(), doc["version"], running)
            else:
                return False  # a reboot before the command: it has yet to answer
        else:
            return False
        self._save(job)
        if doc["state"] not in OPEN:
            del self.jobs[job.dev]
            return True
        return False

    def _save(self, job: _Job) -> None:
        """The job's record, its image while open, and how far the log was looked at."""
        open_ = job.doc["state"] in OPEN
        with atomic(self.db):
            self.db.execute(
                "INSERT INTO jobs (dev, doc, image, cmd, scanned) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(dev) DO UPDATE SET doc = excluded.doc, image = excluded.image, "
                "cmd = excluded.cmd, scanned = excluded.scanned",
                (job.dev, json.dumps(job.doc), job.img.blob if open_ else None,
                 job.cmd if open_ else None, job.scanned))
        job.saved_scan = job.scanned
