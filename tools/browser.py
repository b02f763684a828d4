"""The dashboard in a real browser, for its tests (tests/ui) and the README's screenshots
(tools.screenshots): Debian's Chromium, headless, driven by Playwright, against a running
demo stack (`python -m tools.demo --keep-running`: broker, chain, fog and
firmware meters, all real processes).

`chromium()` starts the browser (never Playwright's own download: the machine reaches no
CDN), with the flags that keep it from calling Google's hosts. `demo_stack(out)` starts the
demo and yields where its services listen and their tokens once the demo says it is
running; it is stopped (SIGTERM: the demo stops everything it started) on the way out.
The pictures and the tests thus look at the same stack. Playwright is a dev dependency
(`pip install -e '.[dev]'`).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("METERLEDGER_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
START_S = 240.0  # the demo anchors its intervals within this: a limit on a hang only
STOP_S = 180.0  # the demo stops its children one by one, each within 35 s: a limit on a hang


class StackError(RuntimeError):
    pass


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise StackError(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does), "
                         "or point METERLEDGER_CHROMIUM at a Chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass(frozen=True)
class Stack:
    out: Path
    fog_url: str
    chain_url: str
    broker_port: int
    auditor: str  # the auditor token of both services (the demo's --token-file)
    fog_operator: str  # the fog's operator.token: enrollment
    dispatch: str  # the chain's dispatch.token: approvals
    dispatch_pub: str
    proc: subprocess.Popen[str]


def _said(log: Path, pattern: str, proc: subprocess.Popen[str], deadline: float) -> re.Match[str]:
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        if proc.poll() is not None:
            raise StackError(f"the demo exited with {proc.returncode}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise StackError(f"the demo did not say {pattern!r} in time:\n{text[-3000:]}")
        time.sleep(0.2)


def _text(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


@contextmanager
def demo_stack(out: Path, meters: int = 6, intervals: int = 2,
               rules: Path | None = ROOT / "docs" / "examples" / "rules-lab.toml",
               consortium: bool = False) -> Iterator[Stack]:
    """The demo, left running (lab broker: a meter nobody enrolled can still say hello, so
    the dashboard has a pending meter to enroll). With `consortium` the chain is the demo's
    four CometBFT validators and `chain_url` the one the fog anchors through; the dispatch
    token and key are then the dispatch validator's (empty here: its folder is the demo's)."""
    out.mkdir(parents=True, exist_ok=True)
    token_file = out.parent / f"{out.name}.token"
    token_file.write_text(secrets.token_hex(16))
    log = out.parent / f"{out.name}.log"
    argv = [sys.executable, "-m", "tools.demo", "--meters", str(meters), "--intervals",
            str(intervals), "--out", str(out), "--keep-running", "--broker", "amqtt",
            "--token-file", str(token_file), "--timeout", str(START_S)]
    if rules is not None:
        argv += ["--rules", str(rules)]
    if consortium:
        argv.append("--consortium")
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + START_S + 60
        urls = _said(log, r"dashboards\s+(http://\S+)/ui/ \(the fog\), (http://\S+)/ui/", proc,
                     deadline)
        broker = _said(log, r"broker .* on 127\.0\.0\.1:(\d+)", proc, deadline)
        _said(log, r"running until Ctrl-C", proc, deadline)
        chain = out / "chain"
        yield Stack(out, urls.group(1), urls.group(2), int(broker.group(1)),
                    token_file.read_text().strip(),
                    (out / "fog" / "operator.token").read_text().strip(),
                    _text(chain / "dispatch.token"), _text(chain / "dispatch.pub"), proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the demo stops what it started
            try:
                proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
