"""What every offline bundle checker (tools.audit's verify, certificate, trade) owes its
tests: a file that is no bundle of its kind is exit 2 with one line naming what is wrong."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tools.audit import BundleError

ROOT = Path(__file__).resolve().parents[2]


def assert_input_error(command: str, path: Path, doc: Any, trust: str, message: str) -> None:
    """`python -m tools.audit COMMAND PATH --trust TRUST` on `doc` (bytes as they are, else
    JSON) exits 2 with one line on stderr that names the file and holds `message`."""
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    r = subprocess.run([sys.executable, "-m", "tools.audit", command, str(path), "--trust",
                        trust], cwd=ROOT, capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (2, ""), r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {path}: ") and message in r.stderr, r.stderr


def assert_rejected(verify: Callable[[Any], Any], bundle: dict[str, Any],
                    tamper: Callable[[dict[str, Any], Any], None], world: Any,
                    check: str) -> None:
    """A copy of `bundle` broken by `tamper` fails `verify` at `check`, in one line."""
    b = copy.deepcopy(bundle)
    tamper(b, world)
    with pytest.raises(BundleError) as e:
        verify(b)
    assert e.value.check == check, str(e.value)
    assert "\n" not in str(e.value)
