"""`pip install .` (not editable) gives a working product: the wire contract loads without the
transports, the firmware tree and board files travel as package data, the tools run from the
installed package alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".git", ".venv", "node_modules", ".stubs", "__pycache__", "*.egg-info",
                              "build", "dist", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                              "demo-out", "tests")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pkg")
    src = work / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)
    wheels, target = work / "wheels", work / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(src)], check=True,
                   capture_output=True)
    (wheel,) = wheels.glob("meterledger-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    return target


def run(target: Path, code: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Python with the installed package and the venv's third-party packages only: -S (no
    site, so no editable-install hooks), -P (no script or current directory on the path)."""
    deps = sysconfig.get_paths()["purelib"]
    return subprocess.run([sys.executable, "-S", "-P", "-c",
                           f"import sys; sys.path[:0] = [{str(target)!r}, {deps!r}]\n" + code],
                          input=stdin, capture_output=True, text=True, cwd=target, timeout=120)


def test_the_wire_contract_loads_without_transports(installed: Path) -> None:
    r = run(installed, "import meterledger.wire, meterledger.wire.anchor, meterledger.wire.modbus\n"
                       "print(meterledger.wire.__file__)\n"
                       "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                       "('paho', 'serial', 'cbor2', 'fog_node', 'aggregator', 'starlette')))")
    assert r.returncode == 0, r.stderr
    where, loaded = r.stdout.splitlines()
    assert where.startswith(str(installed)) and loaded == "[]"


def test_firmware_and_boards_are_package_data(installed: Path) -> None:
    r = run(installed, "from hardware import firmware as F\n"
                       "print(F.FIRMWARE_DIR, F.BOARDS_DIR)\n"
                       "print(F.module('core.cbor').__file__)\n"
                       "print(sorted(p.name for p in F.BOARDS_DIR.glob('*.json')))")
    assert r.returncode == 0, r.stderr
    dirs, cbor, boards = r.stdout.splitlines()
    assert all(d.startswith(str(installed)) for d in dirs.split())
    assert cbor.startswith(str(installed)) and cbor.endswith("core/cbor.py")
    assert boards == str(["esp32_devkitc.json", "pico_w.json"])
    fw = installed / "hardware" / "firmware_tree"
    assert (fw / "main.py").is_file() and (fw / "hal" / "esp32.py").is_file()


def test_the_tools_run_from_the_installed_package(installed: Path) -> None:
    golden = json.loads((ROOT / "tests" / "vectors" / "golden.json").read_text())
    case = golden["valid"][0]
    r = run(installed, "from tools import reading; sys.exit(reading.main(['decode']))",
            stdin=case["message"])
    assert r.returncode == 0, r.stderr
    decoded = json.loads(r.stdout)
    assert case["name"] == "reading_first" and decoded["fields"]["seq"] == case["fields"]["2"]
    assert decoded["kid"] == decoded["fields"]["dev"]
    h = run(installed, "from meterledger.cli import main; sys.exit(main(['fog', 'run', '--help']))")
    assert h.returncode == 0 and "--mqtt-host" in h.stdout, h.stderr
