"""README.md's walk-through, run command by command as a newcomer would type it: one bash
shell, the README's own lines (services in the background with `&`, `kill %N`, `$(cat ...)`),
real mosquitto, fog, chain, virtual meters, RS485 line and flashing tool.

A command that a person would run "after a moment" (a device list before the first reading,
a suggestion before the rules fired, a bundle before its anchor) is run again until it
succeeds and shows what the README says it shows, within a generous limit. It fails if a
command never succeeds, if a service logs a traceback, or if one does not stop cleanly.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kit.fogkit import wait

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
PORTS = (8080, 8081, 8090, 8883)
LIMIT_S = 240.0  # per command; a loaded 2-core machine signs P-256 in pure Python

# what a command must show before the next one runs (the README's comments say so)
EXPECT: list[tuple[str, str]] = [
    # six meters enrolled, and readings arriving ("last seq" above 0)
    ("meterledger fog devices --data-dir fog-data", r"(?s)(?=.*\bactive\s+[1-9]).*6 enrolled"),
    ("curl -s localhost:8080/v1/checkpoint", r'"height"'),
    ("meterledger chain suggestions --chain localhost:8090 --state open", r'"id"'),
    ("meterledger chain suggestions --chain localhost:8090 --state approved",
     r'"instruction": "[0-9a-f]{64}"'),
    ("meterledger audit verify", r"^verified: meter"),
    ("meterledger flash", r"enroll"),
]
# the second device list, after the RS485 meters joined
EXPECT_AFTER_RS485 = r"(?s)(?=.*\bactive\s+[1-9]).*8 enrolled"
# what a service prints once it is up: a person starts the next command after seeing it
READY = [("meterledger broker", r"mosquitto on port"), ("meterledger fog run", r"running: mqtt"),
         ("meterledger meter sim", r"virtual meter\(s\); their keys"),
         ("meterledger chain run", r"listening on"), ("meterledger bus", r"endpoint 1: ")]


def walkthrough() -> list[str]:
    """The commands of README.md's walk-through block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- walkthrough -->", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        line = re.split(r"\s{2,}# ", line, maxsplit=1)[0].rstrip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


class Shell:
    """One bash process fed a command at a time; each answers its output and exit status."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.n = 0

    def run(self, command: str) -> tuple[int, str]:
        self.n += 1
        mark = f"__done_{self.n}__"
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{command}\n__rc=$?; echo; echo {mark} $__rc\n")
        self.proc.stdin.flush()
        out: list[str] = []
        for line in self.proc.stdout:
            if line.startswith(mark):
                return int(line.split()[1]), "".join(out)
            out.append(line)
        raise AssertionError(f"the shell ended during {command!r}: {''.join(out)}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.run("kill $(jobs -p) 2>/dev/null; wait")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(60)


def background(command: str, job: int) -> str:
    """A `&` line with its output in job-N.log, as a second terminal would show it."""
    body = command[:-1].rstrip()
    if ">" in body:
        return f"{body} 2> job-{job}.log &"
    return f"{body} > job-{job}.log 2>&1 &"


def expectation(command: str, seen_devices: int) -> str | None:
    if command.startswith("meterledger fog devices --data-dir fog-data") and \
            "--format" not in command:
        return EXPECT_AFTER_RS485 if seen_devices else EXPECT[0][1]
    for prefix, pattern in EXPECT[1:]:
        if command.startswith(prefix):
            return pattern
    return None


def _says(log: Path, pattern: str) -> Callable[[], bool]:
    return lambda: log.is_file() and re.search(pattern, log.read_text()) is not None


def ports_free() -> list[int]:
    busy = []
    for port in PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


# long: the README's block as one story, each step checked before the next
def test_the_readme_walkthrough_works_command_by_command(tmp_path: Path) -> None:
    busy = ports_free()
    assert not busy, f"the walk-through uses ports {PORTS}; in use here: {busy}"
    # the repository as a newcomer has it after `make setup`: its .venv and docs
    for name in (".venv", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    commands = walkthrough()
    assert commands[0].startswith(". .venv/bin/activate") and len(commands) > 20
    shell = Shell(tmp_path)
    lab = tmp_path / "lab"
    jobs = 0
    devices_seen = 0
    try:
        for command in commands:
            if command.endswith("&"):
                jobs += 1
                rc, out = shell.run(background(command, jobs))
                assert rc == 0, (command, out)
                ready = next(p for prefix, p in READY if command.startswith(prefix))
                log = lab / ("bus.txt" if command.startswith("meterledger bus") else
                             f"job-{jobs}.log")
                wait(_says(log, ready), timeout=LIMIT_S, what=f"{command!r} to say it is up")
                continue
            pattern = expectation(command, devices_seen)
            deadline = time.monotonic() + LIMIT_S
            while True:
                rc, out = shell.run(command)
                if rc == 0 and (pattern is None or re.search(pattern, out, re.M)):
                    break
                assert time.monotonic() < deadline, (
                    f"{command!r} did not succeed within {LIMIT_S:.0f} s: exit {rc}\n{out}\n"
                    + "\n".join(f"--- {p.name}:\n{p.read_text()[-3000:]}"
                                for p in sorted(lab.glob("job-*.log"))))
                time.sleep(1.0)
            if pattern == EXPECT[0][1]:
                devices_seen += 1
        # the services the last line stopped: each said so, none crashed
        shell.run("wait")
        logs = {p.name: p.read_text() for p in lab.glob("job-*.log")}
    finally:
        shell.close()
    assert len(logs) == jobs == 8
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
    assert "fog stopped cleanly" in logs["job-8.log"], logs["job-8.log"][-2000:]
    assert "mosquitto stopped" in logs["job-1.log"]
    # the approved suggestion's instruction reached the meters through the fog
    assert re.search(r"instruction [0-9a-f]{16}: limit", logs["job-5.log"] + logs["job-8.log"])
    # the RS485 meters were read: each of their readings is acked by the fog on the bus
    assert "future_t" not in logs["job-2.log"] + logs["job-5.log"] + logs["job-8.log"]
