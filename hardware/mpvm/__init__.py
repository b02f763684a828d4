"""Run Python code inside the real MicroPython VM (WebAssembly port) under Node.

The VM is the npm package ``@micropython/micropython-webassembly-pyscript`` driven by
``runner.mjs`` next to this file. Each call starts a fresh VM in a new Node process
(about 0.2-0.3 s), with the firmware tree mounted at ``/fw`` (first on ``sys.path``) and
an empty writable ``/flash``; the VM filesystem lives in memory and is discarded.

Facts about this build (1.27.0, pyscript variant) worth knowing when writing VM code:

* ``heap`` only sizes the first GC heap area; the heap grows on demand (split heap), so
  it is not a memory cap and ``gc.mem_free()`` includes 128 MiB of "max new split".
  Measure ``gc.mem_alloc()`` instead.
* ``time.ticks_us``/``ticks_ms``/``time_ns`` have 1 ms resolution and ``ticks_cpu`` is
  always 0: time many iterations, not single calls.
* Recursion depth is limited to about 150 frames.
* ``asyncio`` has no ``run`` (it is bound to the JS event loop); ``os`` has no
  ``urandom``/``fsync``; ``int.bit_length`` is missing; ``pow(a, -1, m)`` returns 0.

Usage::

    from hardware.mpvm import run_micropython
    out = run_micropython("from core.fs import MemFS\\nprint(MemFS)")

or from a shell: ``python -m hardware.mpvm script.py``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from hardware.firmware import FIRMWARE_DIR as _FIRMWARE_DIR
from meterledger import errors
from meterledger.infra.args import ArgumentParser

__all__ = [
    "FIRMWARE_DIR",
    "NPM_PACKAGE",
    "REPO_ROOT",
    "RUNNER",
    "MicroPythonError",
    "MicroPythonUnavailable",
    "main",
    "node_available",
    "run_micropython",
]

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
RUNNER = pathlib.Path(__file__).resolve().parent / "runner.mjs"
FIRMWARE_DIR = _FIRMWARE_DIR  # the firmware tree mounted at /fw (hardware.firmware)
NPM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
_PACKAGE_DIR = REPO_ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"

_SETUP_HINT = "run `make setup` (or `npm ci` in the repo root)"


class MicroPythonUnavailable(errors.HardwareError, RuntimeError):
    """Node or the MicroPython npm package is not installed."""


class MicroPythonError(errors.HardwareError, RuntimeError):
    """VM code failed: an uncaught exception, ``sys.exit(n)`` with n != 0, or a runner error.

    The message contains the MicroPython traceback (the VM's stderr).
    """

    def __init__(self, stdout: str, stderr: str, returncode: int) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.returncode = returncode
        detail = stderr.strip() or "(no output on stderr)"
        super().__init__(f"MicroPython exited with status {returncode}:\n{detail}")


def _node() -> str | None:
    return shutil.which("node")


def node_available() -> bool:
    """True if ``node`` is on PATH and the MicroPython npm package is installed."""
    return _node() is not None and (_PACKAGE_DIR / "package.json").is_file()


def _require_vm() -> str:
    node = _node()
    if node is None:
        raise MicroPythonUnavailable(
            f"`node` is not on PATH; install Node.js >= 20 and {_SETUP_HINT}"
        )
    if not (_PACKAGE_DIR / "package.json").is_file():
        raise MicroPythonUnavailable(
            f"npm package {NPM_PACKAGE} is not installed in {REPO_ROOT / 'node_modules'}; {_SETUP_HINT}"
        )
    return node


def _runner_argv(
    node: str,
    script: pathlib.Path,
    firmware_dir: pathlib.Path | None,
    file_args: list[tuple[str, pathlib.Path]],
    heap: int | None,
) -> list[str]:
    argv = [node, str(RUNNER)]
    if firmware_dir is not None:
        argv += ["--firmware", str(firmware_dir)]
    if heap is not None:
        argv += ["--heap", str(heap)]
    for vm_path, host_path in file_args:
        argv += ["--file", f"{vm_path}={host_path}"]
    argv += ["--", str(script)]
    return argv


def run_micropython(
    code: str,
    *,
    firmware_dir: pathlib.Path | None = FIRMWARE_DIR,
    files: dict[str, bytes] | None = None,
    heap: int | None = None,
    timeout: float = 120.0,
) -> str:
    """Run ``code`` in a fresh MicroPython VM and return what it printed on stdout.

    ``firmware_dir`` is mounted at ``/fw`` and put first on ``sys.path`` (None: no
    firmware). ``files`` maps absolute VM paths (e.g. ``"/flash/x.bin"``) to contents
    placed in the VM filesystem before the code runs. ``heap`` is the initial GC heap in
    bytes (runner default 2 MiB; not a cap, see the module docstring).

    Raises MicroPythonError if the code fails (message includes the traceback),
    MicroPythonUnavailable if Node or the npm package is missing, and
    subprocess.TimeoutExpired after ``timeout`` seconds (the Node process is killed).
    """
    node = _require_vm()
    if heap is not None and heap <= 0:
        raise ValueError(f"heap must be positive, got {heap}")
    with tempfile.TemporaryDirectory(prefix="mpvm-") as tmp:
        tmpdir = pathlib.Path(tmp)
        script = tmpdir / "main.py"
        script.write_text(code, encoding="utf-8")
        file_args: list[tuple[str, pathlib.Path]] = []
        for i, (vm_path, data) in enumerate((files or {}).items()):
            if not vm_path.startswith("/") or "=" in vm_path:
                raise ValueError(f"VM path must be absolute and contain no '=': {vm_path!r}")
            host = tmpdir / f"file{i}.bin"
            host.write_bytes(data)
            file_args.append((vm_path, host))
        argv = _runner_argv(node, script, firmware_dir, file_args, heap)
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            check=False,
        )
    stdout = proc.stdout.decode("utf-8", errors="replace")
    stderr = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise MicroPythonError(stdout, stderr, proc.returncode)
    return stdout


def main(argv: list[str] | None = None, prog: str = "python -m hardware.mpvm") -> int:
    """``python -m hardware.mpvm [options] script.py``: run a script in the VM, stream output."""
    parser = ArgumentParser(
        prog=prog,
        description="Run a Python script inside the real MicroPython VM (Node + WebAssembly) "
        "with the firmware mounted at /fw and an empty writable /flash.",
    )
    parser.add_argument("script", help="script to run ('-' reads stdin)")
    parser.add_argument(
        "--firmware",
        type=pathlib.Path,
        default=FIRMWARE_DIR,
        help=f"firmware tree mounted at /fw (default: {FIRMWARE_DIR})",
    )
    parser.add_argument("--no-firmware", action="store_true", help="do not mount any firmware")
    parser.add_argument("--heap", type=int, default=None, help="initial GC heap in bytes")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="VMPATH=HOSTPATH",
        help="copy a host file into the VM filesystem (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        node = _require_vm()
    except MicroPythonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    file_args: list[tuple[str, pathlib.Path]] = []
    for spec in args.file:
        vm_path, sep, host = str(spec).partition("=")
        if not sep or not vm_path or not host:
            parser.error(f"--file wants VMPATH=HOSTPATH, got {spec!r}")
        file_args.append((vm_path, pathlib.Path(host).resolve()))
    firmware = None if args.no_firmware else pathlib.Path(args.firmware).resolve()
    script = (
        pathlib.Path(args.script) if args.script == "-" else pathlib.Path(args.script).resolve()
    )
    cmd = _runner_argv(node, script, firmware, file_args, args.heap)
    try:
        return subprocess.call(cmd, cwd=os.getcwd())
    except KeyboardInterrupt:
        return 130
