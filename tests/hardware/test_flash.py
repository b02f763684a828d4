"""tools.flash: the image, the key born on the (virtual) device, enrollment, and the plan for
real boards. Real boards are not available here: the --port flow runs against a fake runner
that answers as mpremote would, and the .mpy image is loaded in the real MicroPython VM."""

from __future__ import annotations

import json
import re
import shlex
import stat
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from core import atomic
from core.fs import VfsFS
from fog_node import __main__ as fog_cli
from fog_node.config import FogConfig
from fog_node.node import FogNode, init_data_dir, lock_data_dir
from fog_node.transport.rs485.master import BusMaster
from hardware.mpvm import run_micropython
from hardware.rs485_bus import Rs485Bus
from hardware.virtual_meter import make_meter
from meterledger import wire as P
from tests.kit.fogkit import ManualClock, wait
from tools import flash, flashing
from tools.flash import Result

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "hardware" / "boards"
SOURCE_ONLY = {"main.py", "provision.py", "boot.py"}
T0 = 1_800_000_000


def compiled() -> set[Path]:
    """What must be in the image as .mpy: every firmware module but the source-only ones."""
    return {p.relative_to(FIRMWARE).with_suffix(".mpy") for p in FIRMWARE.rglob("*.py")
            if "__pycache__" not in p.parts and p.relative_to(FIRMWARE).as_posix() not in SOURCE_ONLY}


def printed_id(out: str) -> str:
    """The meter id the tool reports on the key step's line: `... ok (meter <id>)`."""
    m = re.search(r"\(meter ([0-9a-f]{16})\)", out)
    assert m, out
    return m.group(1)


@pytest.fixture(scope="module")
def flashed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One --target flash with enrollment into a real fog data dir."""
    root = tmp_path_factory.mktemp("flash")
    fog_key = init_data_dir(root / "fog")
    image = root / "image"
    out = _flash(["--board", "esp32", "--target", str(image), "--fog-data", str(root / "fog"),
                  "--enroll", "--transport", "rs485", "--rs485-address", "7", "--source", "sim",
                  "--set", "dur=900"])
    assert out["rc"] == 0, out
    return {"root": root, "image": image, "fog": root / "fog", "fog_key": fog_key, **out}


def _flash(argv: list[str], runner: Any = None, cwd: Path | None = None,
           monkeypatch: pytest.MonkeyPatch | None = None) -> dict[str, Any]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        if cwd is not None and monkeypatch is not None:
            monkeypatch.chdir(cwd)
        try:
            rc = flash.main(argv, runner=runner)
        except SystemExit as e:
            rc = int(e.code or 0)
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}


# -- the image in a directory --------------------------------------------------------------
def test_image_layout(flashed):
    image: Path = flashed["image"]
    assert "[1/4] compile firmware" in flashed["out"] and " ... ok" in flashed["out"]
    mpys = {p.relative_to(image) for p in image.rglob("*.mpy")}
    assert mpys == compiled() and mpys, "every firmware module is in the image, compiled"
    assert Path("core/cbor.mpy") in mpys and Path("hal/esp32.mpy") in mpys
    for p in image.rglob("*.mpy"):
        assert p.read_bytes()[:1] == b"M", f"{p} is not a .mpy file"
    sources = {p.relative_to(image) for p in image.rglob("*.py")}
    assert sources == {Path("main.py"), Path("provision.py")}, "only the entry scripts stay source"
    for name in ("main.py", "provision.py"):
        assert (image / name).read_bytes() == (FIRMWARE / name).read_bytes()


def test_config_has_board_pins_and_fog(flashed):
    cfg = json.loads((flashed["image"] / "config.json").read_text())
    board = json.loads((BOARDS / "esp32_devkitc.json").read_text())
    for key, value in board.items():
        assert cfg[key] == value, key
    fog: P.SigningKey = flashed["fog_key"]
    assert cfg["fog"] == fog.id.hex()
    assert cfg["fog_pub"] == fog.public_key.raw.hex()
    assert cfg["transport"] == "rs485" and cfg["rs485_address"] == 7
    assert cfg["source"] == "sim" and cfg["dur"] == 900


def test_key_born_in_the_image_data_dir(flashed):
    data = flashed["image"] / "data"
    mid = printed_id(flashed["out"])
    pub = (data / "pub.hex").read_text()
    key = P.PublicKey(bytes.fromhex(pub))
    assert key.id_hex == mid
    assert (data / "key").is_file()
    assert stat.S_IMODE((data / "key").stat().st_mode) == 0o600
    raw = atomic.load(VfsFS(str(data)), "key")
    assert raw is not None and len(raw) == 32
    assert P.SigningKey.from_bytes(raw).public_key.raw == key.raw


def test_enrolled_and_a_meter_booted_from_the_image_is_logged(flashed):
    image: Path = flashed["image"]
    pub = bytes.fromhex((image / "data" / "pub.hex").read_text())
    clock = ManualClock(T0 - 30)
    node = FogNode(FogConfig(data_dir=flashed["fog"]), clock.now)
    try:
        dev = P.party_id(pub)
        with node.lock:
            device = node.registry.device(dev)
        assert device is not None and device.active
        # the virtual meter boots from the image: its config.json and its flash data dir
        # (the code from firmware/ sources: CPython cannot run .mpy)
        cfg = json.loads((image / "config.json").read_text())
        assert cfg["transport"] == "rs485"
        meter_clock: Any = clock  # make_meter takes any clock with now() and ticks_ms()
        with Rs485Bus(2, 115200, pace=False) as line:
            # the image's RS485 transport on a real pty; the fog's bus master on the other end
            cfg = dict(cfg, rs485_port=line.paths[1], rs485_baud=115200)
            vm = make_meter(0, image / "data", meter_clock, cfg)
            assert vm.app.meter.key.pub == pub, "the meter uses the key born at provisioning"
            assert vm.app.meter.fog_id == node.key.id
            clock.advance(60)
            vm.app.step()
            assert len(vm.readings) == 1
            master = BusMaster(node, line.paths[0], [cfg["rs485_address"]], clock=clock.now,
                               baud=115200, timeout_s=0.5)
            stop = threading.Event()

            def serve() -> None:
                while not stop.is_set():
                    vm.app.transport.poll()
                    time.sleep(0.0005)

            server = threading.Thread(target=serve, daemon=True)
            server.start()
            try:
                # as many polls as it takes (a poll that times out on a loaded host is
                # only retried), up to a limit on a hang
                wait(lambda: vm.app.meter.spool.acked == 1, tick=master.poll_once,
                     timeout=120, what="the reading fetched and acked")
            finally:
                stop.set()
                server.join(5)
                master.close()
                vm.app.transport.close()
        assert vm.app.meter.spool.acked == 1, "the fog fetched, logged and acked the reading"
        assert master.device_at(cfg["rs485_address"]) == dev
        with node.lock:
            assert node.registry.contiguous_seq(dev) == 1
    finally:
        node.close()


def test_private_key_only_in_the_data_dir(flashed):
    data = flashed["image"] / "data"
    raw = atomic.load(VfsFS(str(data)), "key")
    assert raw is not None
    needles = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    holders = []
    for p in flashed["root"].rglob("*"):
        if p.is_file():
            content = p.read_bytes()
            if any(n in content for n in needles):
                holders.append(p.relative_to(flashed["root"]))
    assert holders == [Path("image/data/key")]
    for text in (flashed["out"], flashed["err"]):
        assert raw.hex() not in text.lower()


def test_provision_prints_pub_and_id_only(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"data_dir": "/data"}))
    r = flash.run_command([sys.executable, str(FIRMWARE / "provision.py"), str(cfg),
                           str(tmp_path / "data")], 120.0)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert [ln.split(" ")[0] for ln in lines if ln] == ["PUB", "ID"]
    pub, mid = flash.parse_provision(r.stdout)
    assert (tmp_path / "data" / "pub.hex").read_text() == pub
    raw = atomic.load(VfsFS(str(tmp_path / "data")), "key")
    assert raw is not None and raw.hex() not in r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "data"]
    # a second run finds the key: same identity
    r2 = flash.run_command([sys.executable, str(FIRMWARE / "provision.py"), str(cfg),
                            str(tmp_path / "data")], 120.0)
    assert flash.parse_provision(r2.stdout) == (pub, mid)


def test_provisioning_file_collects_meters_for_fog_enroll(tmp_path, monkeypatch):
    init_data_dir(tmp_path / "fog")
    prov = tmp_path / "batch.json"
    pubs = []
    for i, source in enumerate(["modbus", "pulse"]):  # provisioning needs no source hardware
        r = _flash(["--board", "rp2", "--target", str(tmp_path / f"m{i}"), "--source", source,
                    "--fog-data", str(tmp_path / "fog"), "--provisioning-out", str(prov)])
        assert r["rc"] == 0, r
        assert "[4/4] write the provisioning file ... ok" in r["out"]
        pubs.append((tmp_path / f"m{i}" / "data" / "pub.hex").read_text())
    doc = json.loads(prov.read_text())
    assert [m["pub"] for m in doc["meters"]] == pubs
    assert all(m["board"] == "rp2" for m in doc["meters"])
    # what `python -m fog_node enroll --file` reads
    assert fog_cli.main(["enroll", "--file", str(prov), "--data-dir", str(tmp_path / "fog")]) == 0
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), lambda: float(T0))
    try:
        for pub in pubs:
            d = node.registry.device(P.party_id(bytes.fromhex(pub)))
            assert d is not None and d.active
    finally:
        node.close()
    # the default name is provisioning-<id>.json in the working directory
    r = _flash(["--board", "rp2", "--target", str(tmp_path / "m9"), "--fog-pub",
                (tmp_path / "fog" / "fog.pub").read_text().strip()],
               cwd=tmp_path, monkeypatch=monkeypatch)
    assert r["rc"] == 0, r
    mid = printed_id(r["out"])
    assert json.loads((tmp_path / f"provisioning-{mid}.json").read_text())["meters"][0]["id"] == mid


def test_enroll_is_queued_when_a_fog_node_runs(tmp_path):
    init_data_dir(tmp_path / "fog")
    held = lock_data_dir(tmp_path / "fog")  # as a running node holds it
    assert held is not None
    try:
        r = _flash(["--board", "esp32", "--target", str(tmp_path / "img"),
                    "--fog-data", str(tmp_path / "fog"), "--enroll"])
    finally:
        held.close()
    assert r["rc"] == 0, r
    assert "queued for the running fog node" in r["out"]
    reqs = list((tmp_path / "fog" / "requests").glob("*.json"))
    assert len(reqs) == 1
    req = json.loads(reqs[0].read_text())
    assert req["pub"] == (tmp_path / "img" / "data" / "pub.hex").read_text()
    assert req["status"] == "active"


def test_reflash_keeps_the_key_and_removes_shadowing_sources(tmp_path):
    init_data_dir(tmp_path / "fog")
    args = ["--board", "esp32", "--target", str(tmp_path / "img"), "--fog-data",
            str(tmp_path / "fog"), "--provisioning-out", str(tmp_path / "p.json")]
    assert _flash(args)["rc"] == 0
    pub = (tmp_path / "img" / "data" / "pub.hex").read_text()
    # a source copy left from development would win over the .mpy on MicroPython
    (tmp_path / "img" / "core" / "cbor.py").write_text("raise ImportError\n")
    r = _flash(args)
    assert r["rc"] == 0, r
    assert not (tmp_path / "img" / "core" / "cbor.py").exists()
    assert (tmp_path / "img" / "data" / "pub.hex").read_text() == pub
    assert len(json.loads((tmp_path / "p.json").read_text())["meters"]) == 1


# -- the image in the real MicroPython VM ---------------------------------------------------
VM_CODE = """
import sys
sys.path[:] = ["/img"]
for name in %(mods)r:
    try:
        m = __import__(name)
    except ImportError as e:
        print("NOIMPORT", name, e)
        continue
    for part in name.split(".")[1:]:
        m = getattr(m, part)
    print("MOD", name, m.__file__)
from core import cbor
from core.sha import sha256
obj = {1: [1, -2, b"\\x00\\xff", "txt"], 2: {"a": True}}
print("CBOR", cbor.encode(obj).hex(), cbor.decode(cbor.encode(obj)) == obj)
print("SHA", sha256(b"abc").hex())
import provision
from core.fs import VfsFS

rng = [3]
def rand(n):
    rng[0] = (rng[0] * 1103515245 + 12345) %% 2147483648
    return (rng[0] * 99991).to_bytes(32, "big")[:n]

class Board:
    name = "vm"
    def fs(self): return VfsFS("/flash/data")
    def random_bytes(self, n): return rand(n)
    def now(self): return 1800000000
    def clock_synced(self): return True
    def reset_cause(self): return "power"
    def ticks_ms(self): return 0
    def ticks_diff(self, a, b): return a - b
    def relay(self, on=None): return True

cfg = %(cfg)s
pub, mid = provision.provision(cfg, Board())
print("PUB", pub)
print("ID", mid)
print("FILE", open("/flash/data/pub.hex").read() == pub)
"""


NOT_IN_THE_VM = {"machine", "network", "ntptime", "typing", "collections.abc", "hashlib"}


@pytest.mark.vm
def test_mpy_image_runs_in_micropython(flashed):
    image: Path = flashed["image"]
    files = {"/img/" + p.relative_to(image).as_posix(): p.read_bytes()
             for p in sorted(image.rglob("*")) if p.is_file() and p.suffix in (".mpy", ".py")}
    mods = sorted(p.with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
                  for p in compiled())
    cfg = json.loads((image / "config.json").read_text())
    out = run_micropython(VM_CODE % {"mods": mods, "cfg": repr(cfg)}, firmware_dir=None,
                          files=files)
    loaded = dict(ln.split(" ")[1:3] for ln in out.splitlines() if ln.startswith("MOD "))
    missing = {ln.split(" ")[1]: ln for ln in out.splitlines() if ln.startswith("NOIMPORT ")}
    assert set(loaded) | set(missing) == set(mods)
    for name, path in loaded.items():
        assert path == "/img/" + name.replace(".", "/") + (
            "/__init__.mpy" if name in ("core", "hal") else ".mpy"), (name, path)
    # only what needs a real port (machine, network) or CPython (the host hal) may not load
    for line in missing.values():
        m = re.search(r"no module named '([\w.]+)'", line)
        assert m and m.group(1) in NOT_IN_THE_VM, line
    assert {m for m in mods if m.startswith("core") or m in ("app", "hal")} <= set(loaded)
    assert {"hal.common", "hal.esp32", "hal.rp2", "hal.host"} <= set(missing)
    assert "True" in next(ln for ln in out.splitlines() if ln.startswith("CBOR "))
    assert "SHA ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" in out
    pub, mid = flash.parse_provision(out)
    assert "FILE True" in out
    # the same "random" bytes give the same key on CPython: the VM ran the real key code
    rng = [3]

    def rand(n: int) -> bytes:
        rng[0] = (rng[0] * 1103515245 + 12345) % 2147483648
        return (rng[0] * 99991).to_bytes(32, "big")[:n]

    from core import keys

    d = keys.generate_private(rand)
    assert keys.SigningKey(d).pub.hex() == pub and P.party_id(bytes.fromhex(pub)).hex() == mid


# -- real boards: the plan ------------------------------------------------------------------
def commands(out: str) -> list[list[str]]:
    """The commands a dry run prints, in order: `    $ ...` lines (shell-quoted, an `exec`
    argument may span lines) between `[i/n]` headers and `    # ...` notes."""
    cmds: list[str] = []
    for line in out.splitlines():
        if line.startswith("    $ "):
            cmds.append(line[6:])
        elif line.startswith(("[", "    # ")) or not cmds:
            cmds.append("")
        else:
            cmds[-1] += "\n" + line
    return [shlex.split(c) for c in cmds if c]


def kind(cmd: Sequence[str]) -> str:
    tool = Path(cmd[0]).name
    if tool == "mpremote":
        return "mpremote " + " ".join(cmd[3:5] if cmd[3] in ("fs", "mip") else cmd[3:4])
    if tool.startswith("esptool"):
        return "esptool " + next(c for c in cmd if "flash" in c)
    return tool


@pytest.fixture
def fog_pub(tmp_path) -> str:
    return str(init_data_dir(tmp_path / "fog").public_key.raw.hex())


def test_dry_run_plan_esp32_mqtt_with_firmware(tmp_path, fog_pub, monkeypatch):
    fw = tmp_path / "ESP32_GENERIC.bin"
    r = _flash(["--board", "esp32", "--port", "/dev/ttyUSB9", "--fog-pub", fog_pub,
                "--transport", "mqtt", "--mqtt-host", "10.0.0.2", "--wifi-ssid", "home",
                "--wifi-password", "secret", "--firmware-bin", str(fw), "--dry-run",
                "--mqtt-ca", str(tmp_path / "fog" / "broker" / "ca.crt")],
               cwd=tmp_path, monkeypatch=monkeypatch)
    assert r["rc"] == 0, r
    cmds = commands(r["out"])
    kinds = [kind(c) for c in cmds]
    erase, write = kinds[0], kinds[1]
    assert erase in ("esptool erase-flash", "esptool erase_flash")
    assert write in ("esptool write-flash", "esptool write_flash")
    assert cmds[0][1:5] == ["--chip", "esp32", "--port", "/dev/ttyUSB9"]
    assert cmds[1][-3:] == ["-z", "0x1000", str(fw)]
    n = len(compiled())
    assert kinds[2:2 + n] == ["mpy-cross"] * n
    assert kinds[2 + n:] == ["mpremote exec", "mpremote reset", "mpremote mip install",
                             "mpremote exec", "mpremote fs cp", "mpremote exec", "mpremote run",
                             "mpremote reset"]
    assert all(c[1:3] == ["connect", "/dev/ttyUSB9"] for c in cmds[2 + n:])
    assert 'print("PLATFORM", sys.platform)' in cmds[2 + n][4]
    assert cmds[4 + n][-1] == "umqtt.simple"
    cp = cmds[-4]
    assert cp[5] == "-r" and cp[-1] == ":" and Path(cp[-2]).name == "main.py"
    assert {Path(x).name for x in cp[6:-1]} >= {"core", "hal", "app.mpy", "config.json",
                                                 "provision.py"}
    assert Path(cmds[-2][-1]).name == "provision.py"
    assert re.findall(r"^\[(\d)/(\d)\]", r["out"], re.M)[-1] == ("8", "8")
    assert "secret" not in r["out"], "the dry run does not show the Wi-Fi password"
    assert list(tmp_path.iterdir()) == [tmp_path / "fog"], "a dry run writes nothing"


def test_dry_run_plan_rs485_without_firmware(tmp_path, fog_pub):
    r = _flash(["--board", "rp2", "--port", "/dev/ttyACM0", "--fog-pub", fog_pub,
                "--transport", "rs485", "--rs485-address", "12", "--source", "modbus",
                "--set", "modbus_address=3", "--dry-run"])
    assert r["rc"] == 0, r
    kinds = [kind(c) for c in commands(r["out"])]
    assert not any(k.startswith("esptool") for k in kinds)
    assert "mpremote mip install" not in kinds
    assert [k for k in kinds if k != "mpy-cross"] == [
        "mpremote exec", "mpremote reset", "mpremote exec", "mpremote fs cp", "mpremote exec",
        "mpremote run", "mpremote reset"]
    cfg = json.loads(r["out"].split("config.json: ", 1)[1].splitlines()[0])
    assert cfg["rs485_address"] == 12 and cfg["modbus_address"] == 3
    assert cfg["source"] == "modbus" and cfg["rs485_tx"] == 0 and cfg["led_pin"] == "LED"


def test_dry_run_rp2_firmware_goes_to_the_uf2_drive(tmp_path, fog_pub):
    r = _flash(["--board", "rp2", "--port", "/dev/ttyACM0", "--fog-pub", fog_pub,
                "--firmware-bin", str(tmp_path / "RPI_PICO_W.uf2"), "--uf2-drive",
                str(tmp_path / "RPI-RP2"), "--dry-run"])
    assert r["rc"] == 0, r
    assert not any(kind(c).startswith("esptool") for c in commands(r["out"]))
    assert f"copy {tmp_path / 'RPI_PICO_W.uf2'} -> {tmp_path / 'RPI-RP2'}/" in r["out"]


def test_esptool_v4_spelling(tmp_path):
    def v4(argv: Sequence[str], timeout: float) -> Result:
        assert list(argv)[1:] == ["version"]
        return Result(0, "esptool.py v4.7.0\n4.7.0\n", "")

    assert flash.esptool_major(str(tmp_path / "esptool.py"), v4) == 4
    assert flash.esptool_major(str(tmp_path / "esptool"),
                               lambda a, t: Result(0, "esptool v5.1.0\n5.1.0\n", "")) == 5


class FakeBoard:
    """Answers the tool's commands as mpremote and a board would; mpy-cross runs for real."""

    def __init__(self, platform: str = "esp32", fail: str = "", port: str = "/dev/ttyFAKE",
                 running: bool = False) -> None:
        self.platform = platform
        self.fail = fail
        self.port = port
        self.running = running  # a meter runs main.py: the check moves it aside
        self.calls: list[list[str]] = []
        self.copied: dict[str, bytes] = {}
        self.key = P.SigningKey.generate()

    def __call__(self, argv: Sequence[str], timeout: float) -> Result:
        argv = list(argv)
        self.calls.append(argv)
        assert timeout > 0
        if Path(argv[0]).name == "mpy-cross":
            return flash.run_command(argv, timeout)
        assert Path(argv[0]).name == "mpremote" and argv[1:3] == ["connect", self.port]
        cmd = argv[3:]
        if self.fail and " ".join(cmd).startswith(self.fail):
            return Result(1, "", "mpremote: could not enter raw repl")
        if cmd[0] == "exec" and "PLATFORM" in cmd[1]:
            stopped = "STOPPED\n" if self.running and self.platform in cmd[1] else ""
            return Result(0, f"PLATFORM {self.platform}\n{stopped}", "")
        if cmd[:3] == ["fs", "cp", "-r"]:
            for src in map(Path, cmd[3:-1]):  # the staged image exists when it is copied
                files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
                for f in files:
                    self.copied[f.relative_to(src.parent).as_posix()] = f.read_bytes()
            return Result(0, "", "")
        if cmd[0] == "run":
            assert Path(cmd[1]).read_bytes() == (FIRMWARE / "provision.py").read_bytes()
            return Result(0, f"PUB {self.key.public_key.raw.hex()}\nID {self.key.id.hex()}\n", "")
        return Result(0, "", "")


def test_port_flow_against_a_fake_board(tmp_path, fog_pub, monkeypatch):
    board = FakeBoard()
    r = _flash(["--board", "esp32", "--port", "/dev/ttyFAKE", "--fog-pub", fog_pub,
                "--transport", "rs485", "--rs485-address", "3"], runner=board,
               cwd=tmp_path, monkeypatch=monkeypatch)
    assert r["rc"] == 0, r
    assert len(re.findall(r"^\[\d/6\] .* \.\.\. ok", r["out"], re.M)) == 6
    assert f"meter {board.key.id.hex()} ready" in r["out"]
    assert {Path(k).with_suffix(".mpy") for k in board.copied if k.endswith(".mpy")} == compiled()
    cfg = json.loads(board.copied["config.json"])
    assert cfg["rs485_tx"] == 25 and cfg["fog_pub"] == fog_pub and cfg["rs485_address"] == 3
    assert board.copied["main.py"] == (FIRMWARE / "main.py").read_bytes()
    stale = [c for c in board.calls if c[3] == "exec" and '"core/cbor.py"' in c[4]]
    assert len(stale) == 1 and "os.remove(p)" in stale[0][4]
    cp = next(i for i, c in enumerate(board.calls) if c[3:5] == ["fs", "cp"])
    assert board.calls.index(stale[0]) < cp, "stale sources go before the new image comes"
    doc = json.loads((tmp_path / f"provisioning-{board.key.id.hex()}.json").read_text())
    assert doc["meters"][0]["pub"] == board.key.public_key.raw.hex()
    assert board.calls[-1][3:] == ["reset"]


def test_a_running_meter_is_stopped_before_the_copy(tmp_path, fog_pub, monkeypatch):
    """Its watchdog keeps running after mpremote interrupts main.py: main.py is moved aside
    and the board hard-reset before anything is copied, and main.py.off is dropped after."""
    monkeypatch.setattr(flashing, "PORT_SETTLE_S", 0.0)
    board = FakeBoard(port="/dev/null", running=True)  # a port path that exists
    r = _flash(["--board", "esp32", "--port", "/dev/null", "--fog-pub", fog_pub], runner=board,
               cwd=tmp_path, monkeypatch=monkeypatch)
    assert r["rc"] == 0, r
    assert "running meter stopped" in r["out"]
    steps = [" ".join(c[3:5]) if c[3] != "exec" else "exec " + c[4].split("\n")[0][:20]
             for c in board.calls if Path(c[0]).name == "mpremote"]
    assert steps[:2] == ["exec import os, sys", "reset"]
    assert steps[-4:-2] == ["fs cp", 'exec import os']
    assert "main.py.off" in board.calls[-3][4]


def test_wrong_board_fails_at_the_check(tmp_path, fog_pub):
    board = FakeBoard(platform="rp2")
    r = _flash(["--board", "esp32", "--port", "/dev/ttyFAKE", "--fog-pub", fog_pub],
               runner=board)
    assert r["rc"] == 1
    assert "step 2/6 (check the board on /dev/ttyFAKE is esp32 and stop the meter) failed" \
        in r["err"]
    assert "'rp2'" in r["err"]
    assert not any(c[3:5] == ["fs", "cp"] for c in board.calls if len(c) > 4)


def test_failing_step_is_named(tmp_path, fog_pub):
    board = FakeBoard(fail="fs cp")
    r = _flash(["--board", "esp32", "--port", "/dev/ttyFAKE", "--fog-pub", fog_pub],
               runner=board)
    assert r["rc"] == 1
    assert "copy the image to /dev/ttyFAKE ... FAILED" in r["out"]
    assert "error: step 3/6 (copy the image to /dev/ttyFAKE) failed" in r["err"]
    assert "could not enter raw repl" in r["err"]
    assert not any(c[3] == "run" for c in board.calls if Path(c[0]).name == "mpremote")


def test_bad_provision_output_fails(tmp_path, fog_pub):
    board = FakeBoard()

    def liar(argv: Sequence[str], timeout: float) -> Result:
        r = board(argv, timeout)
        if list(argv)[3:4] == ["run"]:  # an ID that is not the pub's
            return Result(0, r.stdout.split("ID ")[0] + "ID " + "0" * 16 + "\n", "")
        return r

    r = _flash(["--board", "esp32", "--port", "/dev/ttyFAKE", "--fog-pub", fog_pub],
               runner=liar)
    assert r["rc"] == 1 and "generate the meter key on the board" in r["err"]


def test_missing_mpy_cross_fails_the_compile_step(tmp_path, fog_pub, monkeypatch):
    real = flashing.find_tool
    monkeypatch.setattr(flashing, "find_tool",
                        lambda *names: None if names[0] == "mpy-cross" else real(*names))
    r = _flash(["--board", "esp32", "--target", str(tmp_path / "img"), "--fog-pub", fog_pub])
    assert r["rc"] == 1
    assert "step 1/4 (compile firmware" in r["err"] and "mpy-cross not found" in r["err"]
    assert not (tmp_path / "img").exists()


def test_failing_mpy_cross_fails_the_compile_step(tmp_path, fog_pub, monkeypatch):
    fake = tmp_path / "mpy-cross"
    fake.write_text("#!/bin/sh\necho 'SyntaxError: invalid syntax' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(flashing, "find_tool", lambda *names: str(fake))
    r = _flash(["--board", "esp32", "--target", str(tmp_path / "img"), "--fog-pub", fog_pub])
    assert r["rc"] == 1
    assert "step 1/4 (compile firmware" in r["err"] and "SyntaxError" in r["err"]


@pytest.mark.parametrize("argv", [
    [],
    ["--board", "esp8266", "--port", "p", "--fog-pub", "04"],
    ["--board", "esp32", "--fog-pub", "FOG"],  # neither --port nor --target
    ["--board", "esp32", "--port", "p", "--target", "d", "--fog-pub", "FOG"],
    ["--board", "esp32", "--port", "p"],  # no fog key
    ["--board", "esp32", "--port", "p", "--fog-pub", "abcd"],  # not a key
    ["--board", "esp32", "--port", "p", "--fog-data", "/nonexistent/fog"],
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--enroll"],  # no --fog-data
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--transport", "rs485"],
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--transport", "rs485",
     "--rs485-address", "248"],
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--transport", "mqtt",
     "--mqtt-host", "h"],  # a board on MQTT needs Wi-Fi
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--transport", "mqtt",
     "--wifi-ssid", "s"],  # and a broker
    ["--board", "esp32", "--target", "d", "--fog-pub", "FOG", "--firmware-bin", "x.bin"],
    ["--board", "rp2", "--port", "p", "--fog-pub", "FOG", "--firmware-bin", "x.uf2"],
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--set", "novalue"],
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--set", "source=solar"],
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--set", "s0_pin=null",
     "--source", "pulse"],
    ["--board", "esp32", "--port", "p", "--fog-pub", "FOG", "--enroll",
     "--provisioning-out", "x.json"],
], ids=lambda a: " ".join(a[:1] + a[5:]) or "no-args")
def test_bad_usage_exits_2(argv, fog_pub):
    argv = [fog_pub if a == "FOG" else a for a in argv]
    r = _flash(argv, runner=lambda a, t: pytest.fail(f"ran {a}"))
    assert r["rc"] == 2, r
    assert "error" in r["err"] or "usage" in r["err"]


# -- the board definitions ------------------------------------------------------------------
def firmware_keys() -> set[str]:
    """Config keys the firmware reads: literal keys, and the UART prefix + suffix pairs."""
    text = "\n".join(p.read_text() for p in FIRMWARE.rglob("*.py"))
    keys = set(re.findall(r"""(?:get\(|\[)\s*["']([a-z0-9_]+)["']""", text))
    common = (FIRMWARE / "hal" / "common.py").read_text()
    suffixes = set(re.findall(r'pre \+ "(_[a-z_]+)"', common))
    prefixes = set(re.findall(r'self\._rs485\(config, "([a-z0-9]+)"', common))
    assert suffixes >= {"_tx", "_rx", "_de", "_baud", "_uart"} and prefixes == {"rs485", "meter"}
    return keys | {p + s for p in prefixes for s in suffixes}


ESP32_RESERVED = set(range(6, 12)) | {0, 2, 5, 12, 15} | set(range(34, 40)) | {1, 3, 16, 17}
PICO_W_RESERVED = {23, 24, 25, 29}
PICO_UART_PINS = {0: ({0, 12, 16}, {1, 13, 17}), 1: ({4, 8}, {5, 9})}


@pytest.mark.parametrize("name", ["esp32_devkitc.json", "pico_w.json"])
def test_board_files_hold_only_keys_the_firmware_reads(name):
    cfg = json.loads((BOARDS / name).read_text())
    unknown = set(cfg) - firmware_keys()
    assert not unknown, f"{name}: keys the firmware never reads: {unknown}"
    pins = [v for k, v in cfg.items() if k.endswith(("_tx", "_rx", "_de", "_pin"))
            and isinstance(v, int)]
    assert len(pins) == len(set(pins)), "a GPIO used twice"
    assert {"rs485_tx", "rs485_rx", "rs485_de", "meter_tx", "meter_rx", "meter_de",
            "relay_pin", "led_pin", "s0_pin", "data_dir"} <= set(cfg)


def test_esp32_pins_avoid_flash_strapping_input_only_and_repl():
    cfg = json.loads((BOARDS / "esp32_devkitc.json").read_text())
    pins = {k: v for k, v in cfg.items() if k.endswith(("_tx", "_rx", "_de", "_pin"))}
    bad = {k: v for k, v in pins.items() if v in ESP32_RESERVED}
    assert not bad
    assert cfg["rs485_uart"] != 0 and cfg["meter_uart"] != 0 and cfg["rs485_uart"] != cfg["meter_uart"]


def test_pico_w_pins_avoid_the_wifi_chip_and_fit_the_uarts():
    cfg = json.loads((BOARDS / "pico_w.json").read_text())
    ints = {k: v for k, v in cfg.items() if k.endswith(("_tx", "_rx", "_de", "_pin"))
            and isinstance(v, int)}
    assert not {k: v for k, v in ints.items() if v in PICO_W_RESERVED}
    for pre in ("rs485", "meter"):
        tx_ok, rx_ok = PICO_UART_PINS[cfg[pre + "_uart"]]
        assert cfg[pre + "_tx"] in tx_ok and cfg[pre + "_rx"] in rx_ok, pre
    assert cfg["rs485_uart"] != cfg["meter_uart"]
    assert cfg["led_pin"] == "LED"


def test_the_content_ambiguous_rs485_addresses_are_exactly_those_warned_about():
    """The empty GET_READING answer at these addresses has a CRC whose low byte is 0xD2
    (docs/PROTOCOL.md section 17); flashing warns about them."""
    from meterledger.wire import modbus as mb

    ambiguous = [a for a in range(1, 248) if mb.adu(a, mb.FC_GET_READING)[2] == 0xD2]
    assert tuple(ambiguous) == flash.CONTENT_AMBIGUOUS_ADDRESSES
