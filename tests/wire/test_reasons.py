"""One set of stable reason codes: every reason the code raises or reports as a literal is
listed in meterledger.wire.reasons."""

from __future__ import annotations

import ast
from pathlib import Path

from meterledger.wire import reasons

ROOT = Path(__file__).resolve().parents[2]
# calls whose first string argument is a reason code
_REASON_CALLS = {"ProtocolError", "CBORError", "ChainTxError", "ChainError", "VerifyError",
                 "_reject", "refused"}


def _reasons_in_code() -> dict[str, str]:
    found: dict[str, str] = {}
    for top in ("meterledger", "fog_node", "aggregator"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name not in _REASON_CALLS:
                    continue
                args = node.args[2:3] if name == "VerifyError" else node.args[:1]
                for a in args:
                    if isinstance(a, ast.Constant) and isinstance(a.value, str):
                        found.setdefault(a.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_reason_the_code_gives_is_listed() -> None:
    found = _reasons_in_code()
    assert len(found) > 40  # the scan sees the code
    assert {r: where for r, where in found.items() if r not in reasons.ALL} == {}


def test_the_envelope_reasons_are_the_documented_table_in_order() -> None:
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    table = doc.split("## 3.", 1)[1].split("## 4.", 1)[0]
    rows = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")]
    assert tuple(rows) == reasons.ENVELOPE
