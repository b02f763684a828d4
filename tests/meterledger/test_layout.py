"""The layout's own rules (docs/ARCHITECTURE.md): the documented tree is the tree as it is,
modules stay small, and a long function says why it is long."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("meterledger", "fog_node", "aggregator", "hardware", "tools", "firmware", "tests")
MODULE_LINES = 560  # "about 500"
FUNCTION_LINES = 60


def _packages() -> list[str]:
    out = []
    for top in PRODUCT:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            d = init.parent.relative_to(ROOT).as_posix()
            if "node_modules" not in d and "__pycache__" not in d:
                out.append(d + "/")
    return out


def test_architecture_shows_every_package_and_no_other() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    tree = doc.split("## The tree", 1)[1].split("```", 2)[1]
    listed = set(re.findall(r"(?:^|\s)((?:[a-z_0-9]+/)+)", tree, flags=re.M))
    packages = set(_packages())
    assert packages - listed == set(), "packages missing from docs/ARCHITECTURE.md's tree"
    ghosts = {p for p in listed if not (ROOT / p).is_dir()}
    assert ghosts == set(), "the tree lists folders that do not exist"


def _sources() -> list[Path]:
    return [p for top in PRODUCT if top != "tests" for p in (ROOT / top).rglob("*.py")
            if "node_modules" not in p.parts]


def test_modules_stay_small() -> None:
    big = {p.relative_to(ROOT).as_posix(): n for p in _sources()
           if (n := p.read_text().count("\n")) > MODULE_LINES}
    assert big == {}


def test_a_long_function_says_why() -> None:
    silent = []
    for p in _sources():
        if p.parts[len(ROOT.parts)] == "firmware":
            continue  # MicroPython: flat loops are the point there (docs/PROTOCOL.md)
        lines = p.read_text().split("\n")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                head = "\n".join(lines[max(0, node.lineno - 3):node.lineno + 8])
                if size > FUNCTION_LINES and "# long:" not in head:
                    silent.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({size})")
    assert silent == []
