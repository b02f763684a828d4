"""Host-side hardware tooling: the MicroPython VM harness and hardware-in-the-loop helpers."""

from meterledger.deps import require as _require

_require()  # one line, not a traceback, outside the venv
