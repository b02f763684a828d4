"""One error root for everything MeterLedger raises on purpose.

Every failure the project anticipates is a `MeterLedgerError`; its message says what was
wrong (which field, which file, which peer) so a CLI can print it as one line and exit 2, and
a service can log it once with the reason. The subclasses name the kind of failure; the
modules of each service subclass these (e.g. `LogCorruptError(StorageError)`), and keep the
standard base a caller may already catch (`ValueError`, `LookupError`, ...) as a second base.

This module imports nothing, so the pure wire contract (`meterledger.wire`) may depend on it
and still carries nothing of the services.
"""

from __future__ import annotations

__all__ = [
    "ConfigError", "HardwareError", "MeterLedgerError", "NotFoundError", "ProtocolError",
    "RefusedError", "StorageError", "UnavailableError",
]


class MeterLedgerError(Exception):
    """The root: an anticipated failure whose message says what was wrong."""


class ProtocolError(MeterLedgerError, ValueError):
    """Any rejection of wire data. `reason` is a stable code (docs/PROTOCOL.md section 3,
    `meterledger.wire.reasons`) for counters and logs; str(error) says what exactly was
    wrong."""

    def __init__(self, reason: str, msg: str) -> None:
        super().__init__(msg)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {str(self)!r})"


class ConfigError(MeterLedgerError, ValueError):
    """A configuration file, flag or data directory is not usable as given."""


class StorageError(MeterLedgerError):
    """A database or file on disk could not be read or written as expected."""


class NotFoundError(MeterLedgerError, LookupError):
    """What was asked for does not exist (a block, a transaction, a log entry, a meter)."""


class UnavailableError(MeterLedgerError):
    """A peer (broker, chain node, fog API) could not be reached or did not answer."""


class RefusedError(MeterLedgerError):
    """A peer answered and refused the request; `reason` is its stable code when it gave one."""

    def __init__(self, msg: str, reason: str = "") -> None:
        super().__init__(msg)
        self.reason = reason


class HardwareError(MeterLedgerError):
    """A device, serial line, emulator or the MicroPython VM did not behave as required."""
