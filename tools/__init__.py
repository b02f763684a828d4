"""Command-line tools: sign/verify readings, provision, flash, simulate, audit."""

from meterledger.deps import require as _require

_require()  # one line, not a traceback, outside the venv
