"""Type-check the board HAL against the real MicroPython APIs.

    python -m tools.stubcheck [board ...] [--reinstall] [-v]

For each MicroPython board, the port's stub package (micropython-<port>-stubs, which bundles
micropython-stdlib-stubs) is installed into .stubs/<port>/ if it is missing, and mypy checks the
board's modules with that directory as its *typeshed* (--custom-typeshed-dir: MicroPython's own
builtins, os, sys, ...) and on its module path (machine, network, time, ntptime, ...). A wrong
call into machine or network, a missing argument, a keyword the port does not take, or a name
the port does not have is then a type error. The host board (hal/host.py) and hal/__init__.py
are checked with CPython's typeshed. Each board gets its own mypy config and cache, because the
typesheds differ.

Every run also checks a canary module holding one known-bad call; if mypy does not report it,
the check itself is broken (say, the stubs stopped resolving and everything became Any) and the
board fails. Exit status: 0 all boards pass, 1 a board fails, 2 stubs cannot be installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
STUBS = ROOT / ".stubs"  # git-ignored
CACHE = ROOT / ".mypy_cache" / "stubcheck"

# the firmware's MicroPython release; the stub packages are versioned alike (1.29.0.postN)
MICROPYTHON = "1.29"
PYTHON_VERSION = "3.11"  # mypy's view of the language; MicroPython ignores annotations
CANARY = "_stubcheck_canary"

# Strict, except where it fights MicroPython code or the stubs:
#  - the board config is a plain dict (MicroPython has no typing), so bare `dict` is allowed;
#  - core/* is untyped pure logic checked elsewhere: its types are used, its errors silenced,
#    calling it from typed code is allowed, and it may re-export (core.compat.const);
#  - hal.make_board() has no return annotation, so its callers see the board as Any;
#  - errors inside the stub packages are ignored: mypy flags a few inconsistencies in them
#    (redefinitions, undefined names), which are not ours to fix;
#  - stub functions left untyped by the stub generator (ntptime.time) may be called.
CONFIG = """\
[mypy]
python_version = {python}
strict = True
disallow_any_generics = False
warn_unreachable = True
mypy_path = {mypy_path}
untyped_calls_exclude = core,ntptime
{typeshed}
[mypy-core.*]
follow_imports = silent
implicit_reexport = True

[mypy-hal]
disallow_untyped_defs = False
disallow_incomplete_defs = False

[mypy-{skip}]
follow_imports = skip

[mypy-serial.*]
ignore_missing_imports = True
{stub_sections}"""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    modules: tuple[str, ...]
    skip: tuple[str, ...]  # the other boards' modules: never follow imports into them
    package: str | None  # PyPI stub package; None = CPython's typeshed
    canary: str  # a call mypy must reject

    @property
    def stub_dir(self) -> Path:
        return STUBS / self.name

    @property
    def against(self) -> str:
        return f"{self.package} {MICROPYTHON}" if self.package else "CPython typeshed"


_BAD_PIN = "import machine\n\nmachine.Pin(0).frobnicate()\n"
TARGETS = (
    Target(
        "esp32", ("hal.esp32", "hal.common"), ("hal.rp2", "hal.host"),
        "micropython-esp32-stubs", _BAD_PIN,
    ),
    Target(
        "rp2", ("hal.rp2", "hal.common"), ("hal.esp32", "hal.host"),
        "micropython-rp2-stubs", _BAD_PIN,
    ),
    Target(
        "host", ("hal", "hal.host"), ("hal.esp32", "hal.rp2", "hal.common"),
        None, "import os\n\nos.frobnicate()\n",
    ),
)  # fmt: skip


def stubs_installed(t: Target) -> bool:
    assert t.package is not None
    dist = t.package.replace("-", "_") + "-" + MICROPYTHON + "."
    d = t.stub_dir
    return (d / "machine.pyi").is_file() and any(
        p.name.startswith(dist) for p in d.glob("*.dist-info")
    )


def install_stubs(t: Target) -> bool:
    """pip install --target into a fresh directory, then swap it in (no half-installed stubs)."""
    assert t.package is not None
    spec = f"{t.package}=={MICROPYTHON}.*"
    tmp = t.stub_dir.with_name(t.name + ".tmp")
    print(f"stubcheck: installing {spec} into {t.stub_dir.relative_to(ROOT)}/", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--no-user", "--upgrade", "--target", str(tmp), spec]
    shutil.rmtree(tmp, ignore_errors=True)
    if subprocess.run(cmd, check=False).returncode != 0:
        print(f"stubcheck: pip could not install {spec}", file=sys.stderr)
        return False
    shutil.rmtree(t.stub_dir, ignore_errors=True)
    tmp.rename(t.stub_dir)
    return True


def stub_modules(d: Path) -> list[str]:
    """Top-level modules and packages of an installed stub package, as mypy patterns."""
    names: set[str] = set()
    for p in d.iterdir():
        if p.suffix == ".pyi":
            names.add(p.stem)
        elif p.is_dir() and p.name not in ("stdlib", "stubs") and "." not in p.name:
            names.update((p.name, p.name + ".*"))
    return sorted(names)


def write_config(t: Target, canary_dir: Path) -> Path:
    path = [str(FIRMWARE), str(canary_dir)]
    typeshed = stub_sections = ""
    if t.package is not None:
        path.append(str(t.stub_dir))
        typeshed = f"custom_typeshed_dir = {t.stub_dir}\n"
        stub_sections = f"\n[mypy-{','.join(stub_modules(t.stub_dir))}]\nignore_errors = True\n"
    text = CONFIG.format(
        python=PYTHON_VERSION,
        mypy_path=",".join(path),
        typeshed=typeshed,
        skip=",".join(t.skip),
        stub_sections=stub_sections,
    )
    cfg = STUBS / f"mypy-{t.name}.ini"
    cfg.write_text(text)
    return cfg


def mypy_command(t: Target, cfg: Path) -> list[str]:
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(cfg)]
    cmd += ["--cache-dir", str(CACHE / t.name), "--no-error-summary", "--no-pretty"]
    for m in (*t.modules, CANARY):
        cmd += ["-m", m]
    return cmd


def check(t: Target, verbose: bool) -> bool:
    canary_dir = STUBS / "canary" / t.name
    canary_dir.mkdir(parents=True, exist_ok=True)
    canary = canary_dir / f"{CANARY}.py"
    canary.write_text(t.canary)
    cfg = write_config(t, canary_dir)
    cmd = mypy_command(t, cfg)
    if verbose:
        print("$ (cd firmware && " + " ".join(cmd) + ")")
        print(cfg.read_text())
    # run from the firmware root so that reported paths read hal/esp32.py, and with a clean
    # MYPYPATH so that nothing from the caller's environment leaks into the check
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    r = subprocess.run(cmd, cwd=FIRMWARE, env=env, capture_output=True, text=True, check=False)
    lines = (r.stdout + r.stderr).splitlines()
    mark = f"{CANARY}.py:"
    ours = [ln for ln in lines if mark not in ln]
    caught = any(mark in ln and ": error:" in ln for ln in lines)
    errors = [ln for ln in ours if ": error:" in ln]

    head = f"stubcheck {t.name:5}: %-5s ({', '.join(t.modules)} against {t.against})"
    if r.returncode in (0, 1) and caught and not errors:
        print(head % "ok")
        for ln in ours:  # notes, if any
            print("  " + ln)
        return True
    print(head % "FAIL")
    for ln in ours:
        print("  " + ln)
    if not caught:
        print(f"  the canary call in {canary} was not reported: the check is not checking")
    if r.returncode not in (0, 1):
        print(f"  mypy exited with status {r.returncode}")
    return False


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").strip().splitlines()[0]
    ap = argparse.ArgumentParser(prog="python -m tools.stubcheck", description=doc)
    names = [t.name for t in TARGETS]
    ap.add_argument("boards", nargs="*", metavar="board", help=f"{', '.join(names)} (default: all)")
    ap.add_argument("--reinstall", action="store_true", help="reinstall the stub packages")
    ap.add_argument("-v", "--verbose", action="store_true", help="show mypy commands and config")
    args = ap.parse_args(argv)
    unknown = set(args.boards) - set(names)
    if unknown:
        ap.error(f"unknown board(s): {', '.join(sorted(unknown))}")
    chosen = [t for t in TARGETS if not args.boards or t.name in args.boards]

    STUBS.mkdir(exist_ok=True)
    for t in chosen:
        if t.package is not None and (args.reinstall or not stubs_installed(t)):
            if not install_stubs(t):
                return 2
    ok = True
    for t in chosen:
        ok = check(t, args.verbose) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
