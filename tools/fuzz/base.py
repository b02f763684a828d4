"""What every harness is made of: a `Target` (a name, a one-input function over bytes, its
seeds), `Draw` (structured choices made from the input's bytes, so a harness runs the same
in plain Python and under atheris), and `Finding` (an oracle that failed).

A one-input function returns normally for any input the code under test handled as it
promises: accepted, or refused with its documented error. Anything else it raises (an
unexpected exception, or a Finding) is a finding; atheris reports it with the input, and
`tests/fuzz` replays the seeds and `regressions/` through every target without atheris.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
REGRESSIONS = Path(__file__).resolve().parent / "regressions"
GOLDEN = ROOT / "tests" / "vectors" / "golden.json"
# a regression input whose finding is in code this package does not fix (handed over): the
# replay test expects it to fail until that code is fixed, then the prefix is dropped
OPEN = "open-"
T = TypeVar("T")


class Finding(AssertionError):
    """An oracle failed: the code accepted or produced something its contract forbids."""


@dataclass(frozen=True)
class Target:
    """One fuzz target: `one_input(data)` raises only for a finding."""

    name: str
    help: str
    one_input: Callable[[bytes], None]
    seeds: Callable[[], Sequence[bytes]]
    max_len: int = 4096
    setup: Callable[[], None] | None = field(default=None)  # once per process, before inputs
    reset: Callable[[], None] | None = field(default=None)  # a fresh state (stateful targets)
    # findings handed over and not fixed yet, as (exception class name, text in its message):
    # a fuzzing run goes past them (unless told to stop) to find the next one
    known: tuple[tuple[str, str], ...] = ()

    def is_known(self, e: BaseException) -> bool:
        return any(type(e).__name__ == name and text in str(e) for name, text in self.known)

    def regressions(self) -> list[Path]:
        d = REGRESSIONS / self.name
        return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


class Draw:
    """Choices made from an input's bytes, front to back; an exhausted input gives zeros,
    so every input is a valid sequence of choices (what FuzzedDataProvider does)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        """An integer in [0, n), n >= 1."""
        if n <= 1:
            return 0
        width = (n.bit_length() + 7) // 8
        v = 0
        for _ in range(width):
            v = v << 8 | self.byte()
        return v % n

    def choice(self, items: Sequence[T]) -> T:
        return items[self.below(len(items))]

    def bool(self) -> bool:
        return self.byte() & 1 == 1

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(len(self.data))

    def left(self) -> int:
        return max(len(self.data) - self.pos, 0)


def expect(fn: Callable[[], T], *allowed: type[BaseException]) -> T | None:
    """fn(), or None when it raised one of `allowed` (a refusal it promises)."""
    try:
        return fn()
    except allowed:
        return None


def golden() -> dict[str, Any]:
    """tests/vectors/golden.json (the SPEC vectors), or empty where it is not shipped."""
    try:
        doc: dict[str, Any] = json.loads(GOLDEN.read_text())
    except (OSError, ValueError):
        return {}
    return doc


def from_json(v: Any) -> Any:
    """A golden vector's field value as Python: {"hex": ...} is bytes, keys of maps ints."""
    if isinstance(v, dict):
        if list(v) == ["hex"]:
            return bytes.fromhex(v["hex"])
        return {int(k) if k.lstrip("-").isdigit() else k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def input_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
