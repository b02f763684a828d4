"""The steps of `python -m tools.flash` (see its doc): running external programs, the image,
the meter's config, and the `Flasher` that carries the steps out with progress lines."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from hardware.firmware import FIRMWARE_DIR
from meterledger import errors
from meterledger import wire as P
from tools.flash_config import (
    BOARD_FILES,
    broker_hash,
    build_config,
    check_config,
    parse_provision,
    parse_secret,
    parse_set,
    read_fog_pub,
)

__all__ = ["BOARD_FILES", "Flasher", "Result", "Runner", "build_config", "check_config",
           "esptool_major", "find_tool", "parse_provision", "parse_secret", "parse_set",
           "read_fog_pub", "run_command"]

FIRMWARE = FIRMWARE_DIR
# top-level files MicroPython runs from source (boot.py and main.py are looked up as .py only;
# provision.py is run by `mpremote run` and kept readable on the device)
SOURCE_ONLY = ("boot.py", "main.py", "provision.py")
ESP32_FIRMWARE_OFFSET = "0x1000"  # where the original ESP32's MicroPython image starts
PORT_WAIT_S = 30.0  # for the serial port to come back after the board rebooted
PORT_SETTLE_S = 3.0
# Run on the board before anything is copied: report the port, and if a meter is running
# (main.py), move main.py aside so that the hard reset that follows leaves the board at the
# REPL with no watchdog started (a started watchdog cannot be stopped, and with nobody
# feeding it after mpremote interrupted main.py it would reset the board mid-copy).
_STOP_METER = """import os, sys
print("PLATFORM", sys.platform)
if sys.platform == "%s":
    try:
        os.remove("main.py.off")
    except OSError:
        pass
    try:
        os.rename("main.py", "main.py.off")
        print("STOPPED")
    except OSError:
        pass"""


# -- running external programs -----------------------------------------------------------------
@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], float], Result]


def run_command(argv: Sequence[str], timeout: float = 120.0) -> Result:
    """Run one program, output captured; every external program of this tool goes through here."""
    try:
        p = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, check=False)
    except FileNotFoundError:
        return Result(127, "", f"{argv[0]}: not found")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return Result(124, out, f"timed out after {timeout:g} s")
    return Result(p.returncode, p.stdout, p.stderr)


def find_tool(*names: str) -> str | None:
    """The program from this interpreter's environment (venv bin dir), else from PATH."""
    here = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
    for name in names:
        for candidate in (here / name, here / (name + ".exe")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def esptool_major(exe: str, runner: Runner) -> int:
    """esptool's major version: v5 spells subcommands erase-flash/write-flash, v4 erase_flash."""
    text = ""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        if Path(exe).parent == Path(sys.executable).parent:
            text = importlib.metadata.version("esptool")
    if not text:
        r = runner([exe, "version"], 30.0)
        text = r.stdout if r.returncode == 0 else ""
    m = re.search(r"(\d+)\.\d+", text)
    return int(m.group(1)) if m else 4  # the underscore spelling still works on v5


# -- what goes on the board ---------------------------------------------------------------------
def firmware_sources() -> list[Path]:
    """Every firmware .py, relative to firmware/, in a stable order."""
    return sorted(p.relative_to(FIRMWARE) for p in FIRMWARE.rglob("*.py")
                  if "__pycache__" not in p.parts)


def compiled_modules() -> list[Path]:
    return [p for p in firmware_sources() if str(p) not in SOURCE_ONLY]


# -- the steps ------------------------------------------------------------------------------
class StepError(errors.MeterLedgerError):
    """A step failed; the message says why."""


def _tail(r: Result, lines: int = 8) -> str:
    text = (r.stderr.strip() or r.stdout.strip() or "(no output)").splitlines()
    return "\n".join(text[-lines:])


class Flasher:
    def __init__(self, args: argparse.Namespace, config: dict[str, Any], fog: P.PublicKey,
                 runner: Runner = run_command, out: TextIO = sys.stdout) -> None:
        self.a = args
        self.config = config
        self.fog = fog
        self.runner = runner
        self.out = out
        self.dry = bool(args.dry_run)
        self.port: str | None = args.port
        self.target: Path | None = Path(args.target) if args.target else None
        self.plan: list[list[str]] = []  # every external command, in order
        self.stage = Path("<image>")
        self.pub = ""
        self.id = ""
        self.mqtt_hash: str | None = None  # of the broker password born on the meter
        self._notes: list[str] = []
        self._mpremote = ""

    # -- plumbing ---------------------------------------------------------------------------
    def note(self, text: str) -> None:
        if self.dry:
            print("    # " + text, file=self.out)
        else:
            self._notes.append(text)

    def tool(self, *names: str) -> str:
        found = find_tool(*names)
        if found is None:
            if self.dry:
                return names[0]
            hint = " (pip install -e '.[dev,flash]', or `make setup`)"
            raise StepError(f"{names[0]} not found in {Path(sys.executable).parent} or on PATH"
                            + hint)
        return found

    def run(self, argv: list[str], timeout: float = 120.0, what: str = "") -> Result:
        self.plan.append(argv)
        if self.dry:
            print("    $ " + shlex.join(argv), file=self.out)
            return Result(0, "", "")
        r = self.runner(argv, timeout)
        if r.returncode != 0:
            name = what or Path(argv[0]).name
            raise StepError(f"{name} exited with status {r.returncode}:\n{_tail(r)}")
        return r

    def mpremote(self, *args: str, timeout: float = 120.0) -> Result:
        if not self._mpremote:
            self._mpremote = self.tool("mpremote")
        assert self.port is not None
        return self.run([self._mpremote, "connect", self.port, *args], timeout)

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        a = self.a
        n = len(compiled_modules())
        s: list[tuple[str, Callable[[], str]]] = []
        if a.firmware_bin:
            s.append((f"write MicroPython ({Path(a.firmware_bin).name})", self.write_micropython))
        s.append((f"compile firmware ({n} files) and write config.json", self.build))
        if self.port is not None:
            s.append((f"check the board on {self.port} is {a.board} and stop the meter",
                      self.check_board))
            if self.config.get("transport") == "mqtt":
                s.append(("install umqtt.simple", self.install_umqtt))
            s.append((f"copy the image to {self.port}", self.copy_to_board))
            s.append(("generate the meter key on the board (provision.py)", self.provision_board))
        else:
            s.append((f"copy the image to {self.target}", self.copy_to_dir))
            s.append(("generate the meter key in the image (provision.py on the host)",
                      self.provision_host))
        if a.enroll:
            s.append((f"enroll the meter with the fog node in {a.fog_data}", self.enroll))
        else:
            s.append(("write the provisioning file", self.write_provisioning))
        if self.port is not None:
            s.append(("restart the board (main.py starts the meter)", self.restart))
        return s

    def execute(self) -> int:
        steps = self.steps()
        total = len(steps)
        with contextlib.ExitStack() as stack:
            if not self.dry:
                self.stage = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="meterledger-image-")))
            for i, (title, fn) in enumerate(steps, 1):
                head = f"[{i}/{total}] {title} ..."
                if self.dry:
                    print(head + " (dry run)", file=self.out, flush=True)
                else:
                    print(head, end=" ", file=self.out, flush=True)
                self._notes = []
                try:
                    detail = fn()
                except (StepError, OSError, ValueError) as e:
                    if not self.dry:
                        print("FAILED", file=self.out, flush=True)
                    print(f"error: step {i}/{total} ({title}) failed: {e}", file=sys.stderr)
                    return 1
                if not self.dry:
                    print("ok" + (f" ({detail})" if detail else ""), file=self.out, flush=True)
                    for text in self._notes:
                        print("    " + text, file=self.out)
        if not self.dry and self.id:
            print(f"meter {self.id} ready", file=self.out)
        return 0

    # -- 1. MicroPython itself --------------------------------------------------------------
    def write_micropython(self) -> str:
        fw = Path(self.a.firmware_bin)
        if not self.dry and not fw.is_file():
            raise StepError(f"{fw}: no such file")
        if self.a.board == "esp32":
            exe = self.tool("esptool", "esptool.py")
            v5 = esptool_major(exe, self.runner) >= 5
            erase, write = ("erase-flash", "write-flash") if v5 else ("erase_flash", "write_flash")
            assert self.port is not None
            base = [exe, "--chip", "esp32", "--port", self.port]
            self.note("erasing the flash also erases the meter's data dir and key: "
                      "a meter flashed before gets a new identity")
            self.run([*base, erase], 180.0)
            self.run([*base, write, "-z", ESP32_FIRMWARE_OFFSET, str(fw)], 600.0)
        else:
            drive = Path(self.a.uf2_drive)
            if self.dry:
                self.note(f"copy {fw} -> {drive}/ (the RPI-RP2 drive; the board then reboots)")
            else:
                if not (drive / "INFO_UF2.TXT").is_file():
                    raise StepError(f"{drive} is not an RPI-RP2 drive (no INFO_UF2.TXT): hold "
                                    "BOOTSEL while plugging the board in, then mount it")
                shutil.copyfile(fw, drive / fw.name)
        self._wait_for_port()
        return ""

    def _wait_for_port(self) -> None:
        """After the board rebooted: a USB CDC port (Pico W) vanishes and comes back."""
        if self.dry:
            return
        port = self.port or ""
        if not port.startswith("/dev/"):
            time.sleep(PORT_SETTLE_S)
            return
        time.sleep(PORT_SETTLE_S / 2)
        deadline = time.monotonic() + PORT_WAIT_S
        while not os.path.exists(port):
            if time.monotonic() > deadline:
                raise StepError(f"{port} did not come back within {PORT_WAIT_S:g} s")
            time.sleep(0.2)
        time.sleep(PORT_SETTLE_S / 2)  # MicroPython's first boot also formats the filesystem

    # -- 2. the image -----------------------------------------------------------------------
    def build(self) -> str:
        mpy_cross = self.tool("mpy-cross")
        for rel in compiled_modules():
            out = self.stage / rel.with_suffix(".mpy")
            if not self.dry:
                out.parent.mkdir(parents=True, exist_ok=True)
            # -s: the source name in tracebacks, as the module is found on the device
            self.run([mpy_cross, "-o", str(out), "-s", str(rel), str(FIRMWARE / rel)], 60.0)
        for name in SOURCE_ONLY:
            if (FIRMWARE / name).is_file() and not self.dry:
                shutil.copyfile(FIRMWARE / name, self.stage / name)
        text = json.dumps(self.config, indent=2, sort_keys=True) + "\n"
        if self.dry:
            shown = dict(self.config)
            if shown.get("wifi_password"):
                shown["wifi_password"] = "***"
            if shown.get("mqtt_ca"):
                shown["mqtt_ca"] = f"<PEM certificate, {len(shown['mqtt_ca'])} bytes>"
            self.note("config.json: " + json.dumps(shown, sort_keys=True))
        else:
            (self.stage / "config.json").write_text(text)
        return ""

    def image_entries(self) -> list[str]:
        """The image's top-level entries, main.py last: a reset mid-copy then finds no
        main.py importing modules that are not there yet."""
        names = {p.parts[0] if len(p.parts) > 1 else p.with_suffix(".mpy").name
                 for p in compiled_modules()}
        names.update(n for n in SOURCE_ONLY if (FIRMWARE / n).is_file())
        names.add("config.json")
        last = [n for n in ("boot.py", "main.py") if n in names]
        return sorted(names - set(last)) + last

    def stale_sources(self) -> list[str]:
        """Sources of modules the image ships compiled: MicroPython prefers X.py over X.mpy."""
        return [str(p) for p in compiled_modules()]

    # -- 3..4 on a board ----------------------------------------------------------------------
    def check_board(self) -> str:
        r = self.mpremote("exec", _STOP_METER % self.a.board, timeout=60.0)
        if self.dry:
            self.note("only when the board was running a meter (main.py), then:")
            self.mpremote("reset", timeout=60.0)
            return ""
        m = re.search(r"^PLATFORM (\S+)", r.stdout, re.M)
        found = m.group(1) if m else "unknown"
        if found != self.a.board:
            raise StepError(f"the board on {self.port} runs MicroPython for {found!r}, "
                            f"not {self.a.board!r}")
        if re.search(r"^STOPPED", r.stdout, re.M) is None:
            return found
        # the meter's main.py is now main.py.off: a hard reset stops its watchdog for good
        self.mpremote("reset", timeout=60.0)
        self._wait_for_port()
        return found + ", running meter stopped (main.py comes back with the image)"

    def install_umqtt(self) -> str:
        self.mpremote("mip", "install", "umqtt.simple", timeout=180.0)
        return ""

    def copy_to_board(self) -> str:
        stale = json.dumps(self.stale_sources())  # a list of str: valid Python as it stands
        self.mpremote("exec", f"import os\nfor p in {stale}:\n try: os.remove(p)\n"
                      " except OSError: pass", timeout=60.0)
        srcs = [str(self.stage / n) for n in self.image_entries()]
        self.mpremote("fs", "cp", "-r", *srcs, ":", timeout=600.0)
        # main.py is back: drop the copy check_board set aside (kept until now, so that a
        # failed copy leaves the old meter recoverable)
        self.mpremote("exec", 'import os\ntry:\n os.remove("main.py.off")\nexcept OSError:\n'
                      " pass", timeout=60.0)
        return ""

    def provision_board(self) -> str:
        r = self.mpremote("run", str(self.stage / "provision.py"), timeout=600.0)
        return self._provisioned(r)

    def _provisioned(self, r: Result) -> str:
        if self.dry:
            return ""
        try:
            self.pub, self.id = parse_provision(r.stdout)
        except ValueError as e:  # never echo the broker password line
            said = Result(r.returncode, re.sub(r"(?m)^MQTT \S+", "MQTT ***", r.stdout),
                          re.sub(r"(?m)^MQTT \S+", "MQTT ***", r.stderr))
            raise StepError(f"{e}; provision.py said:\n{_tail(said)}") from None
        self.mqtt_hash = broker_hash(r.stdout)  # the password itself is dropped here
        if self.config.get("mqtt_ca") and self.mqtt_hash is None:
            raise StepError("provision.py printed no MQTT password line for a TLS meter")
        if self.mqtt_hash:
            self.note("the meter's broker password is in its data dir; only its hash goes on")
        return f"meter {self.id}"

    def restart(self) -> str:
        self.mpremote("reset", timeout=60.0)
        return ""

    # -- 3..4 into a directory ----------------------------------------------------------------
    def data_dir(self) -> Path:
        assert self.target is not None
        return self.target / str(self.config.get("data_dir", "/data")).strip("/")

    def copy_to_dir(self) -> str:
        target = self.target
        assert target is not None
        if self.dry:
            self.note(f"copy {self.stage}/ -> {target}/ (the data dir {self.data_dir()} is kept)")
            return ""
        target.mkdir(parents=True, exist_ok=True)
        for rel in self.stale_sources():
            (target / rel).unlink(missing_ok=True)
        shutil.copytree(self.stage, target, dirs_exist_ok=True)
        return f"{sum(1 for p in target.rglob('*.mpy'))} .mpy files"

    def provision_host(self) -> str:
        assert self.target is not None
        r = self.run([sys.executable, str(FIRMWARE / "provision.py"),
                      str(self.target / "config.json"), str(self.data_dir())], 300.0,
                     "provision.py")
        for secret in ("key", "mqtt.secret"):
            path = self.data_dir() / secret
            if not self.dry and path.exists():
                path.chmod(0o600)  # host files: keep the meter's secrets to their owner
        return self._provisioned(r)

    # -- 5. the fog -----------------------------------------------------------------------------
    def request(self) -> dict[str, Any]:
        req = {"pub": self.pub, "status": "active", "reason": self.a.reason}
        if self.mqtt_hash:
            req["mqtt_hash"] = self.mqtt_hash
        return req

    def enroll(self) -> str:
        from fog_node.__main__ import decide
        from fog_node.node import FogError

        if self.dry:
            self.note(f"enroll the PUB printed above in {self.a.fog_data} "
                      "(queued if a fog node runs there)")
            return ""
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                decide(Path(self.a.fog_data), [self.request()])
        except FogError as e:
            raise StepError(str(e)) from None
        return buf.getvalue().strip().replace("\n", "; ")

    def provisioning_path(self) -> Path:
        if self.a.provisioning_out:
            return Path(self.a.provisioning_out)
        return Path(f"provisioning-{self.id or '<id>'}.json")

    def write_provisioning(self) -> str:
        path = self.provisioning_path()
        if self.dry:
            self.note(f"write {path} (for `python -m fog_node enroll --file {path}`)")
            return ""
        entry = {"pub": self.pub, "id": self.id, "board": self.a.board,
                 "reason": self.a.reason}
        if self.mqtt_hash:
            entry["mqtt_hash"] = self.mqtt_hash
        doc: dict[str, Any] = {"fog": self.fog.id_hex, "meters": []}
        if path.exists():  # one file can collect a batch of meters
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise StepError(f"{path} exists and is not JSON: {e}") from None
            if not (isinstance(old, dict) and isinstance(old.get("meters"), list)):
                raise StepError(f"{path} exists and is not a provisioning file")
            doc = old
        doc["meters"] = [m for m in doc["meters"]
                         if not (isinstance(m, dict) and m.get("pub") == self.pub)] + [entry]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)
        return f"{path}: `python -m fog_node enroll --file {path}`"
