"""The fog's firmware jobs (fog_node/ota.py, docs/PROTOCOL.md section 22): kept in
data_dir/ota/jobs.db and taken up again by a restarted node; handed to MQTT only when the
link takes them; "done" only when the meter's next birth says it runs the new version,
"rolled_back" when it says the old one; refused for a meter that is not active, or a
manifest whose integers are booleans. The meter's side is the firmware's own core.meter on
a MemFS; the fog is a real FogNode on SQLite files. Clocks are ManualClocks."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from core import cose
from core.fs import MemFS
from core.meter import Meter
from core.sources import Synthetic
from fog_node import ota as O
from fog_node.api import FogAPI
from fog_node.config import FogConfig
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.errors import NotFoundError
from meterledger.infra.sqlite import connect
from tests.kit.fogkit import ManualClock

T0 = 1_800_000_000
REL = P.SigningKey.from_int(0x5EED_0F_7E1EA5E)
REPLAY_TEXT = "(a replay of the accepted command)"  # core/meter.py
FILES = [("app.py", b"# the new app\n" * 50), ("core/new.py", b"# new\n" * 30)]


def signed(version: str = "0.2.0", files: list[tuple[str, bytes]] | None = None) -> bytes:
    return O.sign(O.build(version, files or FILES, "", T0), REL)


class Link:
    """The MQTT link's publish(): False while `up` is False (not handed to a connection),
    else None (the contract before publish() said anything) or True."""

    def __init__(self) -> None:
        self.up: bool = True
        self.answer: bool | None = None
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.calls = 0

    def __call__(self, items: list[tuple[str, bytes, int, bool]]) -> bool | None:
        self.calls += 1
        if not self.up:
            return False
        self.published += items
        return self.answer


class Fog:
    def __init__(self, tmp: Path) -> None:
        self.clock = ManualClock(T0)
        init_data_dir(tmp / "fog")
        self.node = FogNode(FogConfig(data_dir=tmp / "fog", mqtt_security="lab"),
                            self.clock.now)
        self.link = Link()
        self.commands: list[tuple[bytes, bytes]] = []
        self.pusher = self.start()

    def start(self) -> O.OtaPusher:
        """An OtaPusher as a (re)started node makes one."""
        return O.OtaPusher(self.node, self.link, None,
                           lambda dev, msg: self.commands.append((dev, msg)), self.clock.now)

    def job(self, dev: bytes) -> dict[str, Any]:
        doc = O.read_job(self.node.config.data_dir, dev)
        assert doc is not None
        return doc

    def feed(self, *msgs: bytes) -> None:
        with self.node.lock:
            self.node.ingest.process(list(msgs))


@pytest.fixture
def fog(tmp_path: Path) -> Any:
    f = Fog(tmp_path)
    yield f
    f.node.close()


def meter(fog: Fog, fs: MemFS, fw: str = "0.1.0", enroll: bool = True) -> Meter:
    """A meter booting (again) on `fs` with firmware `fw`; its birth reaches the fog."""
    m = Meter(fs, Synthetic(seed=1), os.urandom, fog.node.key.id,
              fog.node.key.public_key.raw, 900, fw)
    m.boot(int(fog.clock.now()), True)
    if enroll:
        with fog.node.lock:
            if fog.node.registry.device(m.key.id) is None:
                fog.node.ingest.decide(bytes(m.key.pub), "active", "test")
    fog.feed(m.birth())
    return m


def answer(fog: Fog, m: Meter, cmd: bytes, detail: str) -> None:
    """The meter takes the fw command and answers `detail` (done: "activating ...")."""
    now = int(fog.clock.now())
    result, f = m.accept_command(cmd, now, True)
    assert f is not None, result
    ok = detail.startswith("activating")
    fog.feed(m.finish_command(f, now, ok, detail, 0, not ok))


def test_a_job_is_done_only_when_the_meters_birth_says_the_new_version(fog):
    fs = MemFS()
    m = meter(fog, fs)
    doc = fog.pusher.push(m.key.id, signed())
    assert doc["state"] == "sent" and doc["via"] == ["mqtt"] and doc["cid"] == 1
    (dev, cmd), = fog.commands
    assert dev == m.key.id and len(fog.link.published) == -(-len(signed()) // O.MQTT_CHUNK)
    fog.feed(meter(fog, fs).birth())  # a reboot before the command: still waiting
    fog.pusher.tick()
    assert fog.job(dev)["state"] == "sent"
    answer(fog, m, cmd, "activating 0.2.0 (2 files), rebooting")
    fog.pusher.tick()
    job = fog.job(dev)
    assert (job["state"], job["status"], job["running"]) == ("activating", P.RESULT_DONE, None)
    meter(fog, fs, "0.2.0")  # the reboot into the new image: its birth
    fog.pusher.tick()
    job = fog.job(dev)
    assert (job["state"], job["running"]) == ("done", "0.2.0")
    assert job["detail"].startswith("activating 0.2.0") and dev not in fog.pusher.jobs


def test_a_meter_back_on_the_old_version_after_activating_is_rolled_back(fog):
    fs = MemFS()
    m = meter(fog, fs)
    fog.pusher.push(m.key.id, signed())
    answer(fog, m, fog.commands[-1][1], "activating 0.2.0 (2 files), rebooting")
    fog.pusher.tick()
    meter(fog, fs, "0.1.0")  # the new image never reached the fog: the loader took it back
    fog.pusher.tick()
    job = fog.job(m.key.id)
    assert (job["state"], job["running"]) == ("rolled_back", "0.1.0")


def test_a_refusal_closes_the_job_and_a_replay_answer_does_not_count(fog):
    fs = MemFS()
    m = meter(fog, fs)
    fog.pusher.push(m.key.id, signed())
    cmd, now = fog.commands[-1][1], int(fog.clock.now())
    _, f = m.accept_command(cmd, now, True)
    again, _ = m.accept_command(cmd, now, True)  # the copy on the other link, answered first
    assert REPLAY_TEXT in cose.parse(again).fields[4]
    fog.feed(again, m.finish_command(f, now, True, "activating 0.2.0 (2 files), rebooting"))
    fog.pusher.tick()
    assert fog.job(m.key.id)["state"] == "activating"
    fog.pusher.push(m.key.id, signed("0.3.0"))
    answer(fog, m, fog.commands[-1][1], "forged: manifest not signed by the release key")
    fog.pusher.tick()
    job = fog.job(m.key.id)
    assert (job["state"], job["cid"], job["version"]) == ("rejected", 2, "0.3.0")
    assert job["detail"].startswith("forged:")


def test_a_push_waits_while_the_mqtt_link_does_not_take_it(fog):
    m = meter(fog, MemFS())
    fog.link.up = False
    size = fog.node.log.size()
    doc = fog.pusher.push(m.key.id, signed())
    assert doc["state"] == "queued" and doc["cid"] is None
    # nothing was sent, nothing commanded, no cid spent, nothing logged
    assert (fog.link.published, fog.commands, fog.node.log.size()) == ([], [], size)
    calls = fog.link.calls
    fog.pusher.tick()
    assert fog.link.calls == calls  # not before RETRY_S
    fog.clock.advance(O.RETRY_S)
    fog.pusher.tick()
    assert fog.link.calls == calls + 1 and fog.job(m.key.id)["state"] == "queued"
    fog.link.up, fog.link.answer = True, True
    fog.clock.advance(O.RETRY_S)
    fog.pusher.tick()
    job = fog.job(m.key.id)
    assert (job["state"], job["cid"], job["via"]) == ("sent", 1, ["mqtt"])
    frames = [p for _, p, _, _ in fog.link.published]
    assert b"".join(f[12:] for f in frames) == signed()
    assert len(fog.commands) == 1 and fog.node.log.size() == size + 1


def test_a_restarted_node_takes_up_its_open_jobs(fog):
    fs = MemFS()
    m = meter(fog, fs)
    other = meter(fog, MemFS())
    fog.link.up = False
    fog.pusher.push(m.key.id, signed())
    fog.link.up = True
    fog.pusher.push(other.key.id, signed())
    fog.pusher = fog.start()  # the node restarts: its jobs come back from jobs.db
    assert set(fog.pusher.jobs) == {m.key.id, other.key.id}
    assert fog.job(m.key.id)["state"] == "queued" and fog.job(other.key.id)["state"] == "sent"
    fog.pusher.tick()  # the waiting one is handed over now, once
    assert fog.job(m.key.id)["state"] == "sent"
    assert [d for d, _ in fog.commands] == [other.key.id, m.key.id]
    answer(fog, other, fog.commands[0][1], "activating 0.2.0 (2 files), rebooting")
    fog.pusher = fog.start()
    fog.pusher.tick()  # the result logged while it was down is found
    assert fog.job(other.key.id)["state"] == "activating"
    fog.pusher = fog.start()
    meter(fog, fs, "0.2.0")  # m reboots without its result: the birth says it all
    fog.pusher.tick()
    assert fog.job(m.key.id)["state"] == "done"
    assert set(fog.pusher.jobs) == {other.key.id}
    db = fog.node.config.data_dir / "ota" / "jobs.db"
    c = connect(db, wal=False)  # a closed job keeps its record, not its image
    rows = dict(c.execute("SELECT dev, image IS NULL FROM jobs").fetchall())
    c.close()
    assert rows == {m.key.id: 1, other.key.id: 0}


def test_a_meter_that_is_not_active_gets_no_firmware(fog):
    m = meter(fog, MemFS(), enroll=False)
    data_dir = fog.node.config.data_dir
    before = O.COUNTERS["refused_not_enrolled"]
    with pytest.raises(O.NotEnrolledError, match="is not enrolled") as e:
        O.queue_push(data_dir, m.key.id, signed())
    assert isinstance(e.value, O.ImageError) and isinstance(e.value, NotFoundError)
    with pytest.raises(O.NotEnrolledError):
        fog.pusher.push(m.key.id, signed())
    assert O.COUNTERS["refused_not_enrolled"] == before + 2
    assert not (data_dir / "ota" / "queue").exists() and O.read_job(data_dir, m.key.id) is None
    with fog.node.lock:
        fog.node.ingest.decide(bytes(m.key.pub), "revoked", "stolen")
    with pytest.raises(O.NotEnrolledError, match="is revoked"):
        O.queue_push(data_dir, m.key.id, signed())
    # the operator's API answers 400 with the reason
    api = FogAPI(fog.node)
    port = api.start("127.0.0.1", 0)
    try:
        token = (data_dir / "operator.token").read_text().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/firmware?dev={m.key.id.hex()}",
                                     method="POST", data=signed(),
                                     headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 400 and b"is revoked" in err.value.read()
    finally:
        api.stop()
    assert O.COUNTERS["refused_not_enrolled"] == before + 4


@pytest.mark.parametrize("where", ["size", "t"])
def test_a_manifest_integer_that_is_a_boolean_is_refused_as_the_meter_does(where):
    from core.ota import OtaError, check_manifest

    f: dict[int, Any] = {0: 20, 1: bytes(8), 2: "1.0", 3: "", 4: [["app.py", 1, bytes(32)]],
                         5: 0}
    O.check_manifest(f)
    check_manifest(f)
    if where == "size":
        f[4][0][1] = True
    else:
        f[5] = True
    with pytest.raises(O.ImageError):
        O.check_manifest(f)
    with pytest.raises(OtaError):
        check_manifest(f)
    head = P.encode(f)
    with pytest.raises(O.ImageError):  # the fog's parse of an image says so too
        O.parse_image(head + b"x")


def test_an_image_too_big_for_a_meters_broker_queue_is_refused(fog):
    m = meter(fog, MemFS())
    n = O.MQTT_MAX_CHUNKS * O.MQTT_CHUNK
    big = signed(files=[("app.py", b"#" * (n - 400))])
    assert len(big) <= n  # it fits, just
    O.queue_push(fog.node.config.data_dir, m.key.id, big)
    bigger = signed(files=[("app.py", b"#" * n)])
    with pytest.raises(O.ImageError, match="max_queued_messages"):
        O.queue_push(fog.node.config.data_dir, m.key.id, bigger)
    with pytest.raises(O.ImageError, match="max_queued_messages"):
        fog.pusher.push(m.key.id, bigger)
    assert O.MQTT_MAX_CHUNKS < O.BROKER_QUEUE
