"""Signed firmware updates on host meters (firmware/core/ota.py, core/fwstore.py, app.py,
main.py; docs/PROTOCOL.md section 22): an image built and signed by the host tools (fog_node.ota) is
delivered in chunks and authorized by a fog-signed "fw" command; a good one is installed,
the meter reboots into it on trial and keeps it once the fog acks; a forged, truncated,
downgraded or corrupted one is refused with the reason and the old files stay; an image
that never reaches the fog, crashes in a loop or whose install was cut short is rolled
back. Clocks are the test's (tests.kit.meterkit.Clock)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from app import VERSION, App
from core import cose, fwstore
from core import messages as M
from fog_node import ota as O
from hal.host import Board, HostReboot
from meterledger import wire as P
from tests.kit.meterkit import FOG, T0, Clock, RecordingTransport

loader = importlib.import_module("main")  # firmware/main.py; imported, it only defines
REL = P.SigningKey.from_int(0x5EED_0F_7E1EA5E)
OTHER = P.SigningKey.from_int(0xBAD_C0DE)
OLD = {"app.py": b"# the old app\n", "core/limit.py": b"# the old limit\n",
       "core/sdm.mpy": b"MPY old sdm"}
NEW = [("app.py", b"# the new app\nVERSION = '0.2.0'\n"), ("core/limit.py", b"# new limit\n"),
       ("core/sdm.py", b"# sdm as source now\n"), ("core/extra.py", b"# a new module\n"),
       ("core/empty.py", b"")]


def image(version: str = "0.2.0", files: list[tuple[str, bytes]] | None = None,
          key: P.SigningKey = REL, board: str = "") -> O.Image:
    return O.parse_image(O.sign(O.build(version, files or NEW, board, T0), key))


def boot(tmp: Path, clock: Clock, tr: RecordingTransport | None = None, **cfg: Any) -> App:
    """A boot as main.py does it: the loader's journal check, then the app."""
    config = {"fog_pub": FOG.pub.hex(), "source": "sim", "seed": 4,
              "release_pub": REL.public_key.raw.hex(), "dur": 900, **cfg}
    board_cfg = dict(config, data_dir=str(tmp / "flash"), fw_dir=str(tmp / "code"),
                     clock=lambda: clock.t, ticks_ms=lambda: clock.up_ms,
                     sleep_ms=lambda ms: None)
    loader.check_image(board_cfg)
    board = Board(board_cfg)
    app = App(board, config, tr if tr is not None else RecordingTransport())
    app.start()
    return app


def reboot(tmp: Path, clock: Clock, tr: RecordingTransport, **cfg: Any) -> App:
    clock.up_ms = 0  # uptime starts again
    return boot(tmp, clock, tr, **cfg)


def code(tmp: Path) -> dict[str, bytes]:
    root = tmp / "code"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def flashed(tmp: Path) -> None:
    for p, b in OLD.items():
        (tmp / "code" / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "code" / p).write_bytes(b)


def deliver(app: App, img: O.Image, upto: int | None = None, size: int = 700) -> int:
    got = 0
    for c in O.chunks(img, size):
        if upto is not None and int.from_bytes(c[8:12], "big") >= upto:
            break
        got = app.fw_chunk(c)
    return got


def fw_command(app: App, cid: int, digest: bytes) -> bytes:
    return cose.sign1(FOG, M.command(app.meter.id, cid, "fw", {1: digest}, T0 + 10**6, b"",
                                     FOG.id))


def authorize(app: App, tr: RecordingTransport, cid: int, digest: bytes) -> dict[Any, Any]:
    """The fw command through the transport; the meter's result (fields)."""
    tr.inbox.append(("cmd", fw_command(app, cid, digest)))
    app.step()
    return cose.parse(tr.results[-1]).fields


def ack(app: App, seq: int) -> bytes:
    stored = app.meter.spool.get(seq)
    return cose.sign1(FOG, M.ack(app.meter.id, seq, cose.digest(stored), T0, FOG.id))


def fw_of(birth: bytes) -> str:
    return str(cose.parse(birth).fields[11])


def test_an_image_is_installed_runs_on_trial_and_stays_once_the_fog_acks(tmp_path):
    flashed(tmp_path)
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr)
    img = image()
    assert deliver(app, img) == len(img.blob)
    with pytest.raises(HostReboot):
        authorize(app, tr, 1, img.digest)
    res = cose.parse(tr.results[-1]).fields
    assert (res[2], res[3]) == (1, M.RESULT_DONE) and res[4].startswith("activating 0.2.0")
    files = code(tmp_path)
    assert {p: files[p] for p, _ in NEW} == dict(NEW)
    assert "core/sdm.mpy" not in files  # the other form of a module it ships is gone
    app = reboot(tmp_path, clock, tr)
    assert app.version == "0.2.0" and fw_of(tr.births[-1]) == "0.2.0"
    assert app.fw["state"] == "trial" and app.status.pattern == "updating"
    for _ in range(200):  # an interval later, a reading; the fog acks it
        clock.advance(5)
        app.step()
    tr.inbox.append(("ack", ack(app, 1)))
    app.step()
    assert app.fw["state"] == "ok" and app.fw["version"] == "0.2.0"
    assert not (tmp_path / "flash" / "ota").exists() or not list((tmp_path / "flash" / "ota").iterdir())
    clock.advance(10 * 900)  # long after the deadline: nothing is rolled back any more
    app.step()
    assert code(tmp_path)["app.py"] == dict(NEW)["app.py"]


@pytest.mark.parametrize("case, reason", [
    ("forged", "forged"), ("truncated", "truncated"), ("downgrade", "downgrade"),
    ("same", "downgrade"), ("corrupt", "digest"), ("wrong_image", "wrong_image"),
    ("nothing", "missing"), ("board", "wrong_board"), ("no_key", "no_release_key"),
    ("manifest_cut", "truncated"), ("too_large", "too_large"),
])
def test_a_bad_image_is_refused_with_its_reason_and_the_old_one_keeps_running(
        tmp_path, case, reason):
    flashed(tmp_path)
    clock, tr = Clock(T0 - 30), RecordingTransport()
    cfg: dict[str, Any] = {"release_pub": None} if case == "no_key" else {}
    if case == "too_large":
        cfg["ota_max_bytes"] = 40
    app = boot(tmp_path, clock, tr, **cfg)
    img = image(key=OTHER) if case == "forged" else image("0.0.9") if case == "downgrade" \
        else image(VERSION) if case == "same" else image(board="esp32") if case == "board" \
        else image()
    digest = img.digest
    if case == "corrupt":  # same sizes, one byte changed: the signature still holds
        img = O.Image(img.head, img.content[:-3] + b"X\n\n", img.fields, True)
    if case == "wrong_image":
        digest = image("0.3.0").digest
    if case == "truncated":
        deliver(app, img, upto=len(img.head) + 20, size=10)
    elif case == "manifest_cut":
        deliver(app, img, upto=len(img.head) // 2, size=10)
    elif case != "nothing":
        deliver(app, img)
    before = code(tmp_path)
    res = authorize(app, tr, 1, digest)
    assert res[3] == M.RESULT_REJECTED
    assert res[4].split(":")[0] == reason, res[4]
    assert code(tmp_path) == before == OLD
    assert app.fw["state"] == "ok" and app.version == VERSION and not app.reboot_requested
    if case in ("no_key", "too_large"):
        return  # this meter takes no image at all
    # the next good image still goes in
    good = image("0.2.1")
    deliver(app, good)
    with pytest.raises(HostReboot):
        authorize(app, tr, 2, good.digest)
    assert cose.parse(tr.results[-1]).fields[3] == M.RESULT_DONE


def test_an_image_that_never_reaches_the_fog_is_rolled_back_at_its_deadline(tmp_path):
    flashed(tmp_path)
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr, ota_trial_s=600)
    img = image()
    deliver(app, img)
    with pytest.raises(HostReboot):
        authorize(app, tr, 1, img.digest)
    lines: list[str] = []
    app = reboot(tmp_path, clock, tr, ota_trial_s=600, log_sink=lines.append)
    tr.up = False  # the new image never gets through
    clock.advance(595)
    app.step()
    assert app.fw["state"] == "trial"
    clock.advance(5)
    with pytest.raises(HostReboot):
        app.step()
    assert code(tmp_path) == OLD
    assert any("rolled back from 0.2.0" in line and "no_ack" in line for line in lines)
    app = reboot(tmp_path, clock, tr)
    assert app.version == VERSION and fw_of(tr.births[-1]) == VERSION
    assert app.fw["rolled_back"] == "0.2.0" and app.fw["reason"].startswith("no_ack:")


def test_a_crash_loop_on_trial_is_rolled_back_at_boot(tmp_path):
    flashed(tmp_path)
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr)
    img = image()
    deliver(app, img)
    with pytest.raises(HostReboot):
        authorize(app, tr, 1, img.digest)
    for n in range(1, 4):  # boots that die before reaching the fog (watchdog resets)
        assert reboot(tmp_path, clock, tr).fw["boots"] == n
    # the fourth: the loader rolls back before the app is imported, the old image runs
    app = reboot(tmp_path, clock, tr)
    assert code(tmp_path) == OLD
    assert app.version == VERSION and app.fw["reason"].startswith("crashed: 3 boots")


def test_an_install_cut_short_by_a_power_loss_is_rolled_back(tmp_path):
    flashed(tmp_path)
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr)
    img = image()
    deliver(app, img)
    app.ota.verify(img.digest, VERSION)
    data, fw = app.board.fs(), app.board.fw_fs()
    real = fw.write
    calls = []

    def dying(path: str, b: bytes) -> None:  # the power goes at the third file written
        calls.append(path)
        if len(calls) == 3:
            raise OSError("power lost")
        real(path, b)

    fw.write = dying
    with pytest.raises(OSError):
        fwstore.install(data, fw, "0.2.0", [p for p, _ in NEW], VERSION)
    assert json.loads((tmp_path / "flash" / "fw.json").read_text())["state"] == "installing"
    app = reboot(tmp_path, clock, tr)  # the loader rolls it back, then the old image runs
    assert code(tmp_path) == OLD
    assert app.version == VERSION and app.fw["reason"].startswith("interrupted:")


def test_chunks_resume_repeat_and_restart(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr)
    img = image()
    cs = O.chunks(img, 100)
    assert app.fw_chunk(cs[0]) == 100
    assert app.fw_chunk(cs[0]) == 100  # a repeat changes nothing
    assert app.fw_chunk(cs[2]) == 100  # a gap: the sender resumes from 100
    assert app.fw_chunk(cs[1]) == 200
    other = O.chunks(image("0.3.0"), 100)
    assert app.fw_chunk(other[1]) == 0  # another session's middle: start over
    assert app.fw_chunk(other[0]) == 100  # its start replaces the first session
    assert app.fw_chunk(b"short") == 100


def test_the_loader_is_never_in_an_image():
    with pytest.raises(O.ImageError):
        O.build("0.2.0", [("main.py", b"x")])
    with pytest.raises(O.ImageError):
        O.build("0.2.0", [("core/fwstore.py", b"x")])
    # a hand-made manifest naming it is refused by the meter as bad_manifest
    from core.ota import OtaError, check_manifest

    f = {0: 20, 1: bytes(8), 2: "1.0", 3: "", 4: [["core/fs.py", 1, bytes(32)]], 5: 0}
    with pytest.raises(OtaError) as e:
        check_manifest(f)
    assert e.value.reason == "bad_manifest" and "loader" in str(e.value)


# --- review findings (H1-H4, M1, M4) ---------------------------------------------------------
def frames(head: bytes, content: bytes = b"", size: int = 700) -> list[bytes]:
    """Chunk frames of a hand-made image (its sid from the manifest's digest)."""
    blob, sid = head + content, P.digest(head)[:8]
    return [sid + pos.to_bytes(4, "big") + blob[pos:pos + size]
            for pos in range(0, len(blob), size)]


def staged(tmp: Path) -> list[str]:
    d = tmp / "flash" / "ota"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_a_manifest_with_odd_keys_is_a_refusal_not_a_crash(tmp_path):
    from core.ota import OtaError, check_manifest

    odd = {0: 20, 1: REL.id, "a": 1}
    with pytest.raises(OtaError) as e:
        check_manifest(odd)
    assert e.value.reason == "bad_manifest"
    head = P.sign1_encoded(REL, P.encode(odd))
    with pytest.raises(O.ImageError):  # the fog's HTTP API answers 400, not 500
        O.parse_image(head)
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr)
    for f in frames(head, b"x" * 50):
        tr.inbox.append(("fw", f))
    app.step()  # through the transport, as a board would take it: no exception, no reset
    assert app.meter.stats["ota_refused"] == 1 and app.ota.refused == 1
    res = authorize(app, tr, 1, P.digest(head))
    assert res[3] == M.RESULT_REJECTED and res[4].startswith("bad_manifest:"), res[4]
    assert staged(tmp_path) == []


BAD_PATHS = ["main.mpy", "boot.mpy", "core/fs.mpy", "core/fwstore.mpy", "core/__init__.py",
             "core/__init__.mpy", "./main.py",
             "core/./fs.py", "Main.py", "CORE/FS.PY", "data/x.py", "ota/n0.py", "/app.py",
             "core//x.py", "../x.py", "core/../main.py", "core/.py", "app.txt", "app",
             "caf\u00e9.py", "a" * 62 + ".py"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_a_path_the_loader_or_the_data_dir_could_be_hit_by_is_refused_everywhere(path):
    from core.ota import OtaError, check_manifest

    f = {0: 20, 1: bytes(8), 2: "1.0", 3: "", 4: [[path, 1, bytes(32)]], 5: 0}
    with pytest.raises(OtaError) as e:
        check_manifest(f)
    assert e.value.reason == "bad_manifest"
    with pytest.raises(O.ImageError):
        O.build("0.2.0", [(path, b"x")])


def test_the_data_dir_is_the_meters_own_and_the_rule_still_takes_plain_modules(tmp_path):
    from app import data_name
    from core.ota import OtaError, check_manifest

    assert data_name({}) == "data" and data_name({"data_dir": "/Store/x"}) == "store"
    assert data_name({"data_dir": str(tmp_path / "flash"), "fw_dir": str(tmp_path)}) == "flash"
    f = {0: 20, 1: bytes(8), 2: "1.0", 3: "", 4: [["store/x.py", 1, bytes(32)]], 5: 0}
    with pytest.raises(OtaError):
        check_manifest(f, data_name="store")
    for ok in ("app.py", "core/main.py", "hal/esp32.mpy", "hal/__init__.py", "x-y_z.1.py",
               "mainx.py", "core/fs2.py"):
        f[4] = [[ok, 1, bytes(32)]]
        check_manifest(f, data_name="store")
        O.build("0.2.0", [(ok, b"x")])


def test_tree_leaves_out_the_loader_in_either_form(tmp_path):
    from tools.ota import tree

    for p in ("main.py", "main.mpy", "boot.mpy", "core/fs.mpy", "core/fwstore.mpy", "Main.py",
              "core/__init__.mpy", "app.py", "core/meter.mpy"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"x")
    assert [p for p, _ in tree(tmp_path)] == ["app.py", "core/meter.mpy"]


def test_stale_backups_are_not_reused_by_the_next_install(tmp_path):
    from core.fs import VfsFS

    flashed(tmp_path)
    data, fw = VfsFS(str(tmp_path / "flash")), VfsFS(str(tmp_path / "code"))
    data.mkdir("ota")
    for i in range(6):  # left by an earlier install: power lost before clear_staging
        data.write(f"ota/b{i}", b"# stale backup\n")
        data.write(f"ota/s{i}", b"# stale shadow\n")
    for i, (_, b) in enumerate(NEW):
        data.write(f"ota/n{i}", b)
    fwstore.install(data, fw, "0.2.0", [p for p, _ in NEW], VERSION)
    assert code(tmp_path)["app.py"] == dict(NEW)["app.py"]
    fwstore.rollback(data, fw, "no_ack: test")
    assert code(tmp_path) == OLD


def test_a_forged_manifest_stages_no_file_bytes_and_stops_the_transfer(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr)
    img = image(key=OTHER)
    got = deliver(app, img, size=len(img.head) + 10)  # the manifest and a bit of a file first
    assert got == len(img.head) + 10 < len(img.blob)  # no more chunks taken
    assert staged(tmp_path) == [] and app.meter.stats["ota_refused"] == 1
    assert authorize(app, tr, 1, img.digest)[4].startswith("forged:")
    app.ota.running = VERSION
    down = image("0.0.9")
    assert deliver(app, down, size=len(down.head)) == len(down.head)
    assert staged(tmp_path) == [] and app.ota.error.reason == "downgrade"


def test_an_image_the_flash_cannot_hold_is_refused_before_staging(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr, ota_reserve=1000)
    img = image()
    need = 2 * len(img.content) + 1000
    app.ota.data.free = lambda: need - 1
    deliver(app, img)
    assert staged(tmp_path) == []
    assert authorize(app, tr, 1, img.digest)[4].startswith("no_space:")
    app.ota.data.free = lambda: need
    deliver(app, img)
    assert staged(tmp_path) == ["manifest", "n0", "n1", "n2", "n3"]  # the empty file: none
    from core.fs import VfsFS

    assert isinstance(VfsFS(str(tmp_path)).free(), int)  # os.statvfs on the host


def test_staged_files_left_by_a_session_go_at_the_next_boot(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr)
    img = image()
    deliver(app, img, upto=len(img.head) + 20, size=10)
    assert "n0" in staged(tmp_path)
    reboot(tmp_path, clock, tr)
    assert staged(tmp_path) == []


def test_the_journal_is_taken_from_its_tmp_when_a_fat_rename_was_cut(tmp_path):
    from core.fs import VfsFS

    data = VfsFS(str(tmp_path))
    rec = {"version": "0.1.0", "state": "trial", "new": "0.2.0", "prev": "0.1.0"}
    data.write("fw.json.tmp", json.dumps(rec).encode())  # fw.json removed, not renamed yet
    assert fwstore.load(data)["state"] == "trial" and fwstore.load(data)["new"] == "0.2.0"
    data.write("fw.json.tmp", json.dumps(rec).encode()[:-5])  # torn: never used
    assert fwstore.load(data)["state"] == "ok"
    data.write("fw.json.tmp", json.dumps(rec).encode())
    data.write("fw.json", json.dumps({"version": "0.3.0", "state": "ok"}).encode())
    assert fwstore.load(data)["version"] == "0.3.0"  # the record itself wins over a .tmp


def test_fw_is_refused_while_the_journal_is_not_ok_and_a_memory_error_rolls_back(tmp_path):
    flashed(tmp_path)
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = boot(tmp_path, clock, tr)
    img = image()
    deliver(app, img)
    app.fw = dict(app.fw, state="installing")
    assert authorize(app, tr, 1, img.digest)[4].startswith("busy:")
    app.fw = fwstore.load(app.board.fs())
    deliver(app, img)
    fw = app.board.fw_fs()
    real, calls = fw.write, []

    def exhausted(path: str, b: bytes) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise MemoryError
        real(path, b)

    fw.write = exhausted
    res = authorize(app, tr, 2, img.digest)
    assert res[3] == M.RESULT_FAILED and res[4].startswith("failed:"), res[4]
    assert code(tmp_path) == OLD and not app.reboot_requested
    assert fwstore.load(app.board.fs())["state"] == "ok" == app.fw["state"]
