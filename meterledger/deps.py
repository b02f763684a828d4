"""The one check that the Python running a command has MeterLedger's dependencies, so that
`python3 -m fog_node` outside the venv says what to do in one line instead of a traceback.
Standard library only: it runs before anything that could be missing is imported."""

from __future__ import annotations

import importlib.util
import sys

# import name -> the package to install (pyproject.toml's dependencies)
_NEEDED = {"cryptography": "cryptography", "paho": "paho-mqtt", "serial": "pyserial",
           "starlette": "starlette", "uvicorn": "uvicorn", "prometheus_client":
           "prometheus_client"}


def missing() -> list[str]:
    return [pkg for mod, pkg in _NEEDED.items() if importlib.util.find_spec(mod) is None]


def require() -> None:
    """Exit 2 with one line naming what is missing and how to get it."""
    lacking = missing()
    if lacking:
        print(f"error: {sys.executable} lacks {', '.join(lacking)}: run `make setup`, then "
              "use .venv/bin/meterledger (or `. .venv/bin/activate` first; on a Pi: "
              "docs/DEPLOY.md)", file=sys.stderr)
        sys.exit(2)
