"""The fog node: verifies signed meter messages and keeps them in an RFC 9162 Merkle log."""

from meterledger.deps import require as _require

_require()  # one line, not a traceback, outside the venv
