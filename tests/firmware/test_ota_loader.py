"""The loader's side of firmware updates (firmware/main.py, core/fwstore.py; docs/PROTOCOL.md
section 22), on CPython and inside the real MicroPython VM.

main.py arms the watchdog and runs the firmware journal before it imports anything an update
replaces: a new app.py that raises at its import is rolled back at once, one that never
gets through its import (a watchdog reset) is counted and rolled back after three boots;
either way the old app is what gets imported next. A rollback (and an install) cut short
by a power loss at any flash operation is finished at the next boot, never leaving a mix of
the two images: tests.kit.faultfs cuts the power at every operation, in every way."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core import fwstore
from core.fs import VfsFS
from hardware.firmware import FIRMWARE_DIR
from hardware.mpvm import run_micropython
from tests.kit.faultfs import FaultFS, PowerLoss, variants

LOADER = ["main.py", "core/__init__.py", "core/fs.py", "core/fwstore.py"]
OLD_APP = "import machine\nmachine.LOG.append('import old app')\nraise SystemExit  # stop here\n"
RAISES = "import machine\nmachine.LOG.append('import new app')\nimport no_such_module_here\n"
HANGS = ("import machine\nmachine.LOG.append('import new app')\n"
         "raise SystemExit  # the watchdog resets it while it imports\n")

# Runs unchanged on CPython and MicroPython: installs app.py from ROOT/data/ota/n0 over the
# old one with core/fwstore.py, then boots ROOT/code/main.py BOOTS times as a board does
# (a fresh interpreter state, `machine` a recording double whose reset() ends the boot).
DRIVER = """
import json
import os
import sys

ROOT = %r
BOOTS = %d
LOG = []


class machine:
    LOG = LOG

    class WDT:
        def __init__(self, timeout):
            LOG.append("wdt " + str(timeout))

        def feed(self):
            pass

    @staticmethod
    def reset():
        LOG.append("reset")
        raise SystemExit


sys.modules["machine"] = machine
sys.path.insert(0, ROOT + "/code")
os.chdir(ROOT + "/code")
from core import fwstore
from core.fs import VfsFS

data = VfsFS(ROOT + "/data")
fwstore.install(data, VfsFS(ROOT + "/code"), "0.2.0", ["app.py"], "0.1.0")


def boot():
    for name in list(sys.modules):
        if name in ("app", "main", "core") or name.startswith("core."):
            del sys.modules[name]
    del LOG[:]
    with open(ROOT + "/code/main.py") as f:
        src = f.read()
    try:
        exec(src, {"__name__": "__main__"})
        end = "returned"
    except SystemExit:
        end = "reset"
    rec = fwstore.load(data)
    with open(ROOT + "/code/app.py") as f:
        app = f.read()
    return [end, LOG[:], rec["state"], rec.get("boots", 0), rec["reason"], app]


print(json.dumps([boot() for _ in range(BOOTS)]))
"""


def tree(root: str, new_app: str) -> dict[str, bytes]:
    """The flash: the loader and the old app in ROOT/code, the new app staged in ROOT/data."""
    files = {f"{root}/code/{p}": (FIRMWARE_DIR / p).read_bytes() for p in LOADER}
    files[f"{root}/code/app.py"] = OLD_APP.encode()
    files[f"{root}/code/config.json"] = json.dumps(
        {"data_dir": f"{root}/data", "fw_dir": f"{root}/code"}).encode()
    files[f"{root}/data/ota/n0"] = new_app.encode()
    return files


def boots_on_cpython(tmp: Path, new_app: str, n: int) -> tuple[list[Any], str]:
    for path, data in tree(str(tmp), new_app).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    r = subprocess.run([sys.executable, "-B", "-c", DRIVER % (str(tmp), n)], cwd=tmp,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stdout


def boots_in_micropython(new_app: str, n: int) -> tuple[list[Any], str]:
    out = run_micropython(DRIVER % ("/flash", n), firmware_dir=None,
                          files=tree("/flash", new_app), timeout=120)
    return json.loads(out.strip().splitlines()[-1]), out


def check_raising_app(boots: list[Any], out: str) -> None:
    (end, log, state, n, reason, app), second = boots
    assert (end, log, state, n, app) == ("reset", ["wdt 8000", "import new app", "reset"],
                                         "ok", 0, OLD_APP)
    assert reason.startswith("crashed: ") and "no_such_module_here" in reason
    assert "E ota: rolled back from 0.2.0: crashed: " in out
    assert second == ["reset", ["wdt 8000", "import old app"], "ok", 0, reason, OLD_APP]


def check_hanging_app(boots: list[Any]) -> None:
    for i, b in enumerate(boots[:3], 1):  # counted before the app is imported: no app code runs
        assert b == ["reset", ["wdt 8000", "import new app"], "trial", i, "", HANGS]
    assert boots[3] == ["reset", ["wdt 8000", "import old app"], "ok", 0,
                        "crashed: 3 boots without reaching the fog", OLD_APP]


def test_a_new_app_that_raises_at_import_is_rolled_back_by_the_loader(tmp_path):
    check_raising_app(*boots_on_cpython(tmp_path, RAISES, 2))


def test_a_new_app_that_never_gets_through_its_import_is_counted_and_rolled_back(tmp_path):
    check_hanging_app(boots_on_cpython(tmp_path, HANGS, 4)[0])


def test_run_hands_the_loaders_watchdog_to_the_board(tmp_path, monkeypatch):
    import app as app_mod

    loader = importlib.import_module("main")  # imported, main.py only defines
    feeds: list[int] = []

    class Wdt:  # machine.WDT as the loader armed it
        def feed(self) -> None:
            feeds.append(1)

    boards: list[Any] = []

    def run_forever(self: Any, period_ms: int = 1000) -> None:
        self.step()  # the app feeds it once a step
        self.board.watchdog_start(8000)  # an app asking for one again: fed, not a second
        boards.append(self.board)

    monkeypatch.setattr(app_mod.App, "run_forever", run_forever)
    loader.run({"data_dir": str(tmp_path / "flash"), "source": "sim"}, Wdt())
    (board,) = boards
    assert len(feeds) == 2 and board.wdt_timeout_ms is None  # the board's own never started


@pytest.mark.vm
def test_the_loader_rolls_back_a_broken_app_inside_micropython():
    check_raising_app(*boots_in_micropython(RAISES, 2))
    check_hanging_app(boots_in_micropython(HANGS, 4)[0])


# --- power loss while rolling back (and installing) ------------------------------------------
OLD = {"app.py": b"# the old app\n", "core/limit.py": b"# the old limit\n",
       "core/sdm.mpy": b"MPY old sdm"}
NEW = [("app.py", b"# the new app\n"), ("core/limit.py", b"# new limit\n"),
       ("core/sdm.py", b"# sdm as source now\n"), ("core/extra.py", b"# a new module\n"),
       ("core/empty.py", b"")]
PATHS = [p for p, _ in NEW]
INSTALLED = {"app.py": b"# the new app\n", "core/limit.py": b"# new limit\n",
             "core/sdm.py": b"# sdm as source now\n", "core/extra.py": b"# a new module\n",
             "core/empty.py": b""}


class Under:
    """The part of one filesystem below `pre` as a filesystem of its own: data/ and code/
    share one FaultFS, so one power cut hits both."""

    def __init__(self, fs: Any, pre: str) -> None:
        self.fs, self.pre = fs, pre

    def read(self, p: str) -> bytes:
        data: bytes = self.fs.read(self.pre + p)
        return data

    def write(self, p: str, b: bytes) -> None:
        self.fs.write(self.pre + p, b)

    def rename(self, a: str, b: str) -> None:
        self.fs.rename(self.pre + a, self.pre + b)

    def remove(self, p: str) -> None:
        self.fs.remove(self.pre + p)

    def listdir(self, p: str = "") -> list[str]:
        names: list[str] = self.fs.listdir(self.pre + p if p else self.pre.rstrip("/"))
        return names

    def mkdir(self, p: str) -> None:
        self.fs.mkdir(self.pre + p)

    def exists(self, p: str) -> bool:
        return bool(self.fs.exists(self.pre + p))


def flash(tmp: Path) -> VfsFS:
    root = VfsFS(str(tmp))
    root.mkdir("data")
    root.mkdir("code")
    code, data = Under(root, "code/"), Under(root, "data/")
    code.mkdir("core")
    for p, b in OLD.items():
        code.write(p, b)
    data.mkdir("ota")
    for i, (_, b) in enumerate(NEW):
        data.write(f"ota/n{i}", b)
    return root


def files(tmp: Path) -> dict[str, bytes]:
    root = tmp / "code"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file()}


def staged(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "data" / "ota").iterdir())


def cut(fs: Any, what: str) -> None:
    """Run `what` (install, rollback) on the two halves of `fs`."""
    data, code = Under(fs, "data/"), Under(fs, "code/")
    if what == "install":
        fwstore.install(data, code, "0.2.0", PATHS, "0.1.0")
    else:
        fwstore.rollback(data, code, "no_ack: test")


def operations(tmp: Path, what: str) -> list[tuple[str, str]]:
    """The mutating operations of `what`, from the state before it."""
    probe = FaultFS(flash(tmp / "probe"))
    if what == "rollback":
        cut(probe, "install")
        probe.ops.clear()
    cut(probe, what)
    assert len(probe.ops) > 20  # backups, restores, two journal writes, the cleanup
    return probe.ops


def cases(tmp: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """Every (operation, way to cut it) of `what`."""
    return [(i, v) for i, (kind, _) in enumerate(operations(tmp, what)) for v in variants(kind)]


def power_cut(tmp: Path, what: str, at: int, how: dict[str, Any]) -> tuple[VfsFS, VfsFS]:
    root = flash(tmp)
    if what == "rollback":
        cut(root, "install")
    with pytest.raises(PowerLoss):
        cut(FaultFS(root, at, **how), what)
    return VfsFS(str(tmp / "data")), VfsFS(str(tmp / "code"))


def test_a_rollback_cut_short_anywhere_is_finished_at_the_next_boot(tmp_path):
    seen = set()
    for n, (at, how) in enumerate(cases(tmp_path, "rollback")):
        tmp = tmp_path / str(n)
        data, code = power_cut(tmp, "rollback", at, how)
        left = fwstore.load(data)["state"]
        seen.add(left)
        rec, rolled = fwstore.boot(data, code, 3)
        if left == "trial":  # cut before "rolling_back" was written: nothing was touched yet
            assert not rolled and files(tmp) == INSTALLED and rec["boots"] == 1, (at, how)
            continue
        assert rolled == (left == "rolling_back"), (at, how)
        assert files(tmp) == OLD, (at, how)  # every file back, the added ones gone
        assert (rec["state"], rec["version"], rec["rolled_back"]) == ("ok", "0.1.0", "0.2.0")
        assert rec["reason"] == "no_ack: test", (at, how)  # the first reason, not "interrupted"
        assert staged(tmp) == []
    assert seen == {"trial", "rolling_back", "ok"}


def test_a_rollback_cut_short_twice_is_still_finished(tmp_path):
    ops = operations(tmp_path, "rollback")
    journal = [i for i, (kind, path) in enumerate(ops) if path == "data/fw.json.tmp"]
    restore = range(journal[1] + 1, journal[2])  # after "rolling_back", before "ok"
    assert len(restore) > 10
    for k, first in enumerate((restore[0], restore[len(restore) // 2], restore[-1])):
        tmp = tmp_path / f"{k}"
        data, _ = power_cut(tmp, "rollback", first, {})
        assert fwstore.load(data)["state"] == "rolling_back"
        again = FaultFS(VfsFS(str(tmp)))
        fwstore.boot(Under(again, "data/"), Under(again, "code/"), 3)  # counts the resume's ops
        for second in range(len(again.ops)):
            t2 = tmp_path / f"{k}-{second}"
            d2, c2 = power_cut(t2, "rollback", first, {})
            with pytest.raises(PowerLoss):
                f = FaultFS(VfsFS(str(t2)), second)
                fwstore.boot(Under(f, "data/"), Under(f, "code/"), 3)
            rec, _ = fwstore.boot(d2, c2, 3)
            assert files(t2) == OLD and rec["state"] == "ok", (first, second)
            assert rec["reason"] == "no_ack: test"


def test_an_install_cut_short_anywhere_leaves_one_image_or_the_other(tmp_path):
    for n, (at, how) in enumerate(cases(tmp_path, "install")):
        tmp = tmp_path / str(n)
        data, code = power_cut(tmp, "install", at, how)
        left = fwstore.load(data)["state"]
        rec, rolled = fwstore.boot(data, code, 3)
        if left == "trial":  # cut in the cleanup after the journal said so: the new image
            assert files(tmp) == INSTALLED and rec["boots"] == 1, (at, how)
            continue
        assert files(tmp) == OLD and rec["state"] == "ok", (at, how)
        assert rolled == (left == "installing")
        if rolled:
            assert rec["reason"].startswith("interrupted:")


VM_FAULTS = """
import json
from core import fwstore
from core.fs import VfsFS


class Cut(Exception):
    pass


class Faulty:
    # every mutating operation counted, the `at`-th one cut (not done) and all after it
    def __init__(self, fs, pre, power):
        self.fs, self.pre, self.power = fs, pre, power

    def _op(self):
        p = self.power
        p[0] += 1
        if p[1] is not None and p[0] > p[1]:
            raise Cut()

    def read(self, p):
        return self.fs.read(self.pre + p)

    def exists(self, p):
        return self.fs.exists(self.pre + p)

    def listdir(self, p=""):
        return self.fs.listdir(self.pre + p if p else self.pre[:-1])

    def write(self, p, b):
        self._op()
        self.fs.write(self.pre + p, b)

    def rename(self, a, b):
        self._op()
        self.fs.rename(self.pre + a, self.pre + b)

    def remove(self, p):
        self._op()
        self.fs.remove(self.pre + p)

    def mkdir(self, p):
        self._op()
        self.fs.mkdir(self.pre + p)


OLD = %r
NEW = %r
PATHS = [p for p, _ in NEW]


def setup(n):
    root = VfsFS("/flash/" + str(n))
    for d in ("data", "data/ota", "code", "code/core"):
        root.mkdir(d)
    for p, b in OLD:
        root.write("code/" + p, b)
    for i, (_, b) in enumerate(NEW):
        root.write("data/ota/n" + str(i), b)
    fwstore.install(VfsFS("/flash/" + str(n) + "/data"), VfsFS("/flash/" + str(n) + "/code"),
                    "0.2.0", PATHS, "0.1.0")
    return root


def code(n):
    fs = VfsFS("/flash/" + str(n) + "/code")
    return sorted([p, fs.read(p).decode()] for p in PATHS + ["core/sdm.mpy"] if fs.exists(p))


power = [0, None]
root = setup("probe")
fwstore.rollback(Faulty(root, "data/", power), Faulty(root, "code/", power), "no_ack: vm")
out = {"ops": power[0], "cases": []}
for at in range(power[0]):
    root = setup(at)
    power = [0, at]
    try:
        fwstore.rollback(Faulty(root, "data/", power), Faulty(root, "code/", power), "no_ack: vm")
    except Cut:
        pass
    data, fw = VfsFS("/flash/" + str(at) + "/data"), VfsFS("/flash/" + str(at) + "/code")
    left = fwstore.load(data)["state"]
    rec, rolled = fwstore.boot(data, fw, 3)
    out["cases"].append([left, rolled, rec["state"], rec["reason"], code(at)])
print(json.dumps(out))
"""


@pytest.mark.vm
def test_a_rollback_cut_short_is_finished_inside_micropython():
    old = sorted(OLD.items())
    new = [(p, b) for p, b in NEW]
    script = VM_FAULTS % ([(p, b) for p, b in old], new)
    out = json.loads(run_micropython(script, timeout=300).strip().splitlines()[-1])
    old_code = sorted([p, b.decode()] for p, b in OLD.items())
    new_code = sorted([p, b.decode()] for p, b in INSTALLED.items())
    assert out["ops"] > 20 and len(out["cases"]) == out["ops"]
    lefts = [c[0] for c in out["cases"]]
    assert lefts[:2] == ["trial", "trial"] and "rolling_back" in lefts
    for at, (left, rolled, state, reason, got) in enumerate(out["cases"]):
        if left == "trial":
            assert (rolled, state, got) == (False, "trial", new_code), at
        else:
            assert (rolled, state, reason, got) == (left == "rolling_back", "ok", "no_ack: vm",
                                                   old_code), at
