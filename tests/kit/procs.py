"""Processes that tests start: never left behind, whatever the test did.

`spawned(argv)` starts a process in its own session (so it and anything it starts form one
process group) and stops it on the way out of the `with`, passed or failed; `stop(proc)`
does that for a `Popen` made elsewhere. Stopping sends SIGTERM, waits generously for the
process to exit (a loaded machine can be slow, and a test never asserts on how slow), then
kills it and whatever is left of its group. `group_gone(pgid)` tells whether a process
group has no member left (no child of the process outlived it); `LineReader` reads what a
process prints without ever blocking the test on it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

STOP_TIMEOUT = 30.0  # seconds: a limit on a hang, not a performance requirement


def group_gone(pgid: int) -> bool:
    """True when no process is left in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a member we may not signal: still a member
        return False
    return False


def _kill_group(proc: subprocess.Popen[Any], pgid: int | None) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
         timeout: float = STOP_TIMEOUT) -> tuple[Any, Any]:
    """Signal `proc` (if it still runs), wait up to `timeout` s for it to exit, and kill it
    (and its process group, if it leads one) if it does not; then kill any member of its
    group still there. Returns what it wrote to its pipes (stdout, stderr; None for a
    stream that was not piped). Never raises for a process that will not stop: the caller
    sees -9 in `proc.returncode`."""
    pgid: int | None = None
    try:
        if os.getpgid(proc.pid) == proc.pid:
            pgid = proc.pid
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc, pgid)
        out, err = proc.communicate()
    except ValueError:  # its pipes were read and closed by the test already
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, pgid)
            proc.wait()
        out = err = None
    if pgid is not None and not group_gone(pgid):
        _kill_group(proc, pgid)
    return out, err


@contextlib.contextmanager
def spawned(argv: Sequence[str], *, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT,
            **kw: Any) -> Iterator[subprocess.Popen[str]]:
    """`subprocess.Popen(argv, text=True, **kw)` in a session of its own, stopped with `stop`
    when the block ends (however it ends)."""
    proc: subprocess.Popen[str] = subprocess.Popen(list(argv), text=True, start_new_session=True,
                                                   **kw)
    try:
        yield proc
    finally:
        stop(proc, sig, timeout)


class LineReader:
    """The lines a process writes to a pipe, read by a thread of their own, so that a test
    waiting for a line never blocks for ever on a process that hangs."""

    def __init__(self, stream: Iterable[str] | None) -> None:
        assert stream is not None, "the stream is not piped"
        self._q: queue.Queue[str] = queue.Queue()
        self._stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed once the process is stopped
            for line in self._stream:
                self._q.put(line)

    def next(self, what: str = "a line", timeout: float = 60.0) -> str:
        """The next line (without its newline); fails the test if none comes in `timeout`."""
        try:
            return self._q.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            raise AssertionError(f"no {what} within {timeout} s") from None
