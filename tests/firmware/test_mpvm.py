"""The MicroPython VM harness runs code on the real MicroPython VM (no mocks)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

from hardware.mpvm import (
    REPO_ROOT,
    RUNNER,
    MicroPythonError,
    node_available,
    run_micropython,
)

# `make setup` installs the VM; a machine without it fails these tests rather than skip
pytestmark = [pytest.mark.vm]


def test_the_vm_is_installed() -> None:
    assert node_available(), "node or the MicroPython npm package is missing: run `make setup`"


def test_runs_on_micropython_with_firmware_on_path() -> None:
    out = run_micropython(
        "import sys\n"
        "print(sys.implementation.name)\n"
        "print(sys.path[0])\n"
        "from core.fs import MemFS\n"
        "m = MemFS()\n"
        "m.write('a', b'xy')\n"
        "print(m.read('a'))\n"
    )
    assert out.splitlines() == ["micropython", "/fw", "b'xy'"]


def test_vfsfs_writes_renames_and_reads_in_the_vm_flash() -> None:
    out = run_micropython(
        "import os\n"
        "from core.fs import VfsFS\n"
        "fs = VfsFS('/flash/x')\n"
        "fs.write('a.tmp', b'payload')\n"
        "fs.write('a', b'old')\n"
        "fs.rename('a.tmp', 'a')\n"
        "print(fs.read('a'), fs.exists('a.tmp'), sorted(os.listdir('/flash/x')))\n"
    )
    assert out == "b'payload' False ['a']\n"


def test_exception_raises_with_traceback() -> None:
    with pytest.raises(MicroPythonError) as info:
        run_micropython("print('before')\ndef f():\n    raise ValueError('boom 42')\nf()\n")
    err = info.value
    assert err.returncode == 1
    assert err.stdout == "before\n"
    assert "ValueError: boom 42" in err.stderr
    assert "Traceback" in str(err) and "ValueError: boom 42" in str(err)


def test_exception_in_firmware_module_names_the_module() -> None:
    with pytest.raises(MicroPythonError, match=r"/fw/core/fs\.py"):
        run_micropython("from core.fs import MemFS\nMemFS().read('missing')\n")


def test_sys_exit_status() -> None:
    assert run_micropython("import sys\nprint('ok')\nsys.exit(0)\n") == "ok\n"
    with pytest.raises(MicroPythonError) as info:
        run_micropython("import sys\nsys.exit(7)\n")
    assert info.value.returncode == 7


def test_files_are_delivered_byte_exact() -> None:
    blob = os.urandom(70_000) + bytes(range(256))
    other = b"\x00\n\r\xff"
    out = run_micropython(
        "import hashlib, binascii\n"
        "for p in ('/flash/x.bin', '/data/deep/y.bin'):\n"
        "    d = open(p, 'rb').read()\n"
        "    print(len(d), binascii.hexlify(hashlib.sha256(d).digest()).decode())\n",
        files={"/flash/x.bin": blob, "/data/deep/y.bin": other},
        firmware_dir=None,
    )
    assert out.splitlines() == [
        f"{len(blob)} {hashlib.sha256(blob).hexdigest()}",
        f"{len(other)} {hashlib.sha256(other).hexdigest()}",
    ]


def test_output_without_trailing_newline_is_kept() -> None:
    out = run_micropython("print('line')\nprint('partial', end='')\n", firmware_dir=None)
    assert out == "line\npartial"


def test_partial_line_is_flushed_before_the_traceback() -> None:
    with pytest.raises(MicroPythonError) as info:
        run_micropython("print('half', end='')\nraise KeyError('k9')\n", firmware_dir=None)
    assert info.value.stdout == "half"
    assert "KeyError: k9" in info.value.stderr


def test_heap_option_sets_the_initial_gc_heap() -> None:
    # `heap` only sizes the first GC area; this build grows the heap on demand.
    code = "import gc\ngc.collect()\nprint(gc.mem_free() + gc.mem_alloc())\n"
    small = int(run_micropython(code, heap=256 * 1024, firmware_dir=None))
    large = int(run_micropython(code, heap=4 * 1024 * 1024, firmware_dir=None))
    assert 3 * 1024 * 1024 < large - small < 4 * 1024 * 1024


def test_runner_works_from_any_cwd_and_reads_stdin(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        ["node", str(RUNNER), "--firmware", str(REPO_ROOT / "firmware"), "-"],
        input=b"from core import fs\nprint(fs.__name__)\n",
        capture_output=True,
        cwd=str(tmp_path),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"core.fs\n"


def test_python_dash_m_entry_point(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import sys\nfrom core.fs import MemFS\nprint(sys.implementation.name)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hardware.mpvm", str(script)],
        capture_output=True,
        cwd=str(REPO_ROOT),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"micropython\n"
