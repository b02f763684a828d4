"""One logging setup for every service and command: timestamps, levels, and text or JSON.

    --log-level debug|info|warning|error   (default: info; env METERLEDGER_LOG_LEVEL)
    --log-format text|json                 (default: text; env METERLEDGER_LOG_FORMAT)

Text is one line per event, `2026-12-05T15:40:01.123Z INFO fog_node: message`, for a
terminal; JSON is one object per line (`ts`, `level`, `logger`, `msg`, and `exc` with a
traceback) for journald's structured export or a log shipper. Under systemd the timestamps
are journald's too; the format stays the same so a line copied from one is the other.
Logs go to stderr: stdout stays the commands' output (ids, tables, JSON answers).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
_OURS = "_meterledger_handler"  # marks the handler setup() installed
FORMATS = ("text", "json")
ENV_LEVEL, ENV_FORMAT = "METERLEDGER_LOG_LEVEL", "METERLEDGER_LOG_FORMAT"
# libraries that are chatty at info about what the services already say once
_QUIET = ("uvicorn.access", "uvicorn.error", "httpx", "paho", "asyncio")


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": _utc(record.created), "level": record.levelname,
                               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-format on a command's parser."""
    g = parser.add_argument_group("logging (meterledger/infra/logs.py)")
    g.add_argument("--log-level", choices=LEVELS, default=None,
                   help=f"least severe events logged (default: ${ENV_LEVEL} or info)")
    g.add_argument("--log-format", choices=FORMATS, default=None,
                   help=f"text for a terminal, json (one object a line) for journald or a log "
                        f"shipper (default: ${ENV_FORMAT} or text)")


def setup(level: str | None = None, fmt: str | None = None,
          stream: Any = None) -> None:
    """Configure the root logger for this process (again: replaced, never doubled). A root
    logger someone else configured (pytest's capture, a program embedding us) is left as
    it is, as logging.basicConfig does."""
    level = (level or os.environ.get(ENV_LEVEL) or "info").lower()
    fmt = (fmt or os.environ.get(ENV_FORMAT) or "text").lower()
    if level not in LEVELS:
        level = "info"
    if fmt not in FORMATS:
        fmt = "text"
    # child processes (the fog's MQTT process) log the same way
    os.environ[ENV_LEVEL], os.environ[ENV_FORMAT] = level, fmt
    root = logging.getLogger()
    if any(not getattr(h, _OURS, False) for h in root.handlers):
        return  # configured by whoever runs us (pytest, an embedding program): theirs
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _OURS, True)
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in _QUIET:
        logging.getLogger(name).setLevel(quiet)


def from_arguments(args: argparse.Namespace) -> None:
    setup(getattr(args, "log_level", None), getattr(args, "log_format", None))


class Once:
    """Says whether to log an event of `key` now: the first time, then at most once per
    `window_s` of real time, counting what it held back (bounded: the oldest keys forgotten).

        if (n := once("refused", party, reason)) is not None:
            log.info("... (%d more since the last line)", n)
    """

    def __init__(self, window_s: float = 60.0, keys: int = 4096,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.window_s = window_s
        self.keys = keys
        self.monotonic = monotonic or time.monotonic
        self._last: dict[tuple[object, ...], tuple[float, int]] = {}
        self._lock = threading.Lock()  # HTTP handler threads share one

    def __call__(self, *key: object) -> int | None:
        """None to hold back; else how many were held back since the last line."""
        with self._lock:
            now = self.monotonic()
            last = self._last.get(key)
            if last is not None and now - last[0] < self.window_s:
                self._last[key] = (last[0], last[1] + 1)
                return None
            held = last[1] if last is not None else 0
            self._last.pop(key, None)
            self._last[key] = (now, 0)
            while len(self._last) > self.keys:
                self._last.pop(next(iter(self._last)))
            return held
