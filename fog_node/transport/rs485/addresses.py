"""RS485 slave addresses as the config and command line give them."""

from __future__ import annotations

from collections.abc import Sequence

from meterledger.wire import modbus as mb


def parse_addresses(text: str) -> list[int]:
    """"1,2,5-9" -> [1, 2, 5, 6, 7, 8, 9]; each address 1..247, no repeats."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"bad RS485 address {part!r} (expected N or N-M)") from None
        if a > b:
            raise ValueError(f"bad RS485 address range {part!r}")
        if not (1 <= a and b <= mb.MAX_ADDRESS):  # before range(): "1-99999999999" is no list
            raise ValueError(f"RS485 addresses {part!r} outside 1..{mb.MAX_ADDRESS}")
        out.extend(range(a, b + 1))
    return check_addresses(out)


def check_addresses(addresses: Sequence[int]) -> list[int]:
    out = [int(a) for a in addresses]
    for a in out:
        if not 1 <= a <= mb.MAX_ADDRESS:
            raise ValueError(f"RS485 address {a} outside 1..{mb.MAX_ADDRESS}")
    if len(set(out)) != len(out):
        raise ValueError("an RS485 address is listed twice")
    return out
