"""The emulators as processes stop cleanly on SIGTERM (a test's teardown, a service manager):
promptly (bounded generously: a loaded machine is slow, and no test asserts how slow), with
their pseudo-terminals closed (an endpoint held open by the test sees the hang-up) and no
process of theirs left behind.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hardware.pty import PtyPort
from tests.kit.fogkit import wait
from tests.kit.procs import STOP_TIMEOUT, LineReader, group_gone, spawned, stop

pytestmark = pytest.mark.hil

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


@contextlib.contextmanager
def holding(path: str) -> Iterator[int]:
    """The slave side of a pty opened by the test, as a program under test would."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)


def hung_up(fd: int) -> bool:
    """The pty's master side is gone: the slave polls POLLHUP."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


def terminate(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then its exit within STOP_TIMEOUT (else it is killed and the test fails);
    returns its stderr."""
    _out, err = stop(proc, signal.SIGTERM, STOP_TIMEOUT)
    assert proc.returncode != -signal.SIGKILL, f"no exit within {STOP_TIMEOUT} s of SIGTERM"
    assert group_gone(proc.pid), "a process of its group outlived it"
    return err or ""


def test_bus_process_stops_on_sigterm() -> None:
    argv = [sys.executable, "-m", "hardware.rs485_bus", "--endpoints", "3", "--baud", "19200"]
    with spawned(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE) as proc:
        out = LineReader(proc.stdout)
        paths = [out.next("endpoint path").split(": ", 1)[1] for _ in range(3)]
        with holding(paths[0]) as a, holding(paths[2]) as c:
            os.write(a, b"hello")
            got = bytearray()

            def arrived() -> bool:
                with contextlib.suppress(BlockingIOError):
                    got.extend(os.read(c, 64))
                return bytes(got) == b"hello"

            wait(arrived, what="bytes across the bus process")  # it is up and forwarding
            assert not hung_up(a)
            err = terminate(proc)
            assert proc.returncode == 0, err
            assert "counters:" in err  # it left its serving loop and reported, as on Ctrl-C
            assert hung_up(a) and hung_up(c)  # every endpoint's master side was closed


def test_sdm_emulator_process_stops_on_sigterm() -> None:
    argv = [sys.executable, "-m", "hardware.sdm_emulator", "--pty", "--baud", "19200",
            "--profile", "constant:500"]
    with spawned(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE) as proc:
        path = LineReader(proc.stdout).next("pty path")
        with holding(path) as fd:
            assert not hung_up(fd)
            err = terminate(proc)
            assert proc.returncode == 0, err
            assert "counters:" in err
            assert hung_up(fd)


def test_sdm_emulator_on_a_bus_endpoint_stops_on_sigterm() -> None:
    """With --port it does not own the pty: it closes its side, the bus's stays."""
    with PtyPort() as bus_side:
        argv = [sys.executable, "-m", "hardware.sdm_emulator", "--port", bus_side.path,
                "--baud", "19200"]
        with spawned(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE) as proc:
            assert LineReader(proc.stdout).next("port path") == bus_side.path
            err = terminate(proc)
            assert proc.returncode == 0, err
        assert bus_side.write(b"x") == 1  # the line is still there for the next endpoint


def test_virtual_meter_process_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    with PtyPort() as line:
        argv = [sys.executable, "-m", "hardware.virtual_meter", "--rs485", line.path,
                "--address", "3", "--data-dir", str(tmp_path / "meters")]
        with spawned(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE) as proc:
            key = tmp_path / "meters" / "meter-000" / "pub.hex"
            wait(lambda: key.exists() or proc.poll() is not None, timeout=120,
                 what="the meter booted")
            assert proc.poll() is None, proc.communicate()
            terminate(proc)
            assert proc.returncode == 128 + signal.SIGTERM
