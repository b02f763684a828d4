"""Shared test setup.

The firmware is a self-contained MicroPython tree whose modules import each other as
top-level packages (`from core import cbor`), exactly as they do on a board where the
tree is copied to the flash root. Tests drive it as a device would, so they put
firmware/ on sys.path.
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
if str(FIRMWARE) not in sys.path:
    sys.path.insert(0, str(FIRMWARE))


import pytest  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free loopback port, stopped after the test."""
    from hardware.broker import Mosquitto

    with Mosquitto(tmp_path / "broker") as b:
        yield b


def pytest_collection_modifyitems(config, items):
    """Everything under tests/system/ runs a whole stack: mark it `system`, so
    `pytest -m "not system"` is the quick inner loop."""
    system = ROOT / "tests" / "system"
    for item in items:
        if system in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.system)
