"""Access to the firmware tree for tools that drive it as a device would.

The firmware is a self-contained MicroPython tree whose modules import each other as
top-level packages (`from core import cbor`), as they do on a board's flash. Host tools
reach it by putting firmware/ on sys.path; nothing else on the host imports it.

The tree is the repository's firmware/; `hardware/firmware_tree` links to it, so that an
installed package (`pip install .`, not editable) carries it as package data, and
`FIRMWARE_DIR` finds it either way. Board definitions are `BOARDS_DIR`.
"""

from __future__ import annotations

import importlib
import pathlib
import sys
from types import ModuleType

_HERE = pathlib.Path(__file__).resolve().parent
FIRMWARE_DIR = (_HERE / "firmware_tree").resolve()
BOARDS_DIR = _HERE / "boards"


def module(name: str) -> ModuleType:
    """Import a firmware module, e.g. module("core.cose")."""
    path = str(FIRMWARE_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)
