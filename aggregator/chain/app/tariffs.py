"""Tariffs on the chain (docs/PROTOCOL.md section 28): a utility proposes a version, a
regulator approves it (both signatures), and from its start it is the tariff in force;
bills are computed off the chain under it (`meterledger.wire.billing`).

Application records:

    bl.tariff   name || version (8 bytes) -> {"utility", "tx", "start", "body", and once
                                              approved "regulator", "approval"}
"""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.ledger import ChainError

T_TARIFF = "bl.tariff"


def tariff_key(name: str, version: int) -> bytes:
    return name.encode() + b"\x00" + G.u64(version)


def tariff(st: G.Staged, name: str, version: int) -> dict[str, Any] | None:
    rec = st.get(T_TARIFF, tariff_key(name, version))
    return None if rec is None else dict(rec)


def in_force(st: G.Staged, name: str, t: int) -> dict[str, Any] | None:
    """The approved version of tariff `name` with the latest start at or before `t` (a
    later version replaces an earlier one from its start), None if none."""
    best: dict[str, Any] | None = None
    for _, rec in st.scan(T_TARIFF, name.encode() + b"\x00"):
        if "approval" in rec and rec["start"] <= t and (
                best is None or (rec["start"], rec["body"][2]) > (best["start"],
                                                                 best["body"][2])):
            best = dict(rec)
    return best


def propose(st: G.Staged, utility: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """A new version of a tariff: the next number of its name, from the same utility,
    starting after now (a tariff is never retroactive)."""
    name, version, start = body[1], body[2], body[3]
    prev = tariff(st, name, version - 1) if version > 1 else None
    if (version > 1 and prev is None) or tariff(st, name, version) is not None:
        raise ChainError("tariff_version", f"tariff {name!r} has no version {version - 1}, or "
                                           f"has version {version} already: versions go "
                                           "1, 2, ...")
    if prev is not None and prev["utility"] != utility:
        raise ChainError("not_permitted", f"tariff {name!r} is {prev['utility'].hex()}'s; "
                                          f"{utility.hex()} may not version it")
    if start <= now:
        raise ChainError("tariff_retroactive", f"tariff {name!r} version {version} would start "
                                               f"at {start}, not after the chain time {now}")
    st.put(T_TARIFF, tariff_key(name, version), {"utility": utility, "tx": tx,
                                                  "start": start, "body": body})


def approve(st: G.Staged, regulator: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """The regulator's approval of exactly the proposed tariff (its transaction's digest),
    before it starts."""
    name, version, digest = body[1], body[2], body[3]
    rec = tariff(st, name, version)
    if rec is None:
        raise ChainError("unknown_tariff", f"no tariff {name!r} version {version} was proposed")
    if rec["tx"] != digest:
        raise ChainError("tariff_mismatch", f"tariff {name!r} version {version} was proposed "
                                            f"by transaction {rec['tx'].hex()}, not "
                                            f"{digest.hex()}")
    if "approval" in rec:
        raise ChainError("already_approved", f"tariff {name!r} version {version} is approved")
    if now >= rec["start"]:
        raise ChainError("tariff_started", f"tariff {name!r} version {version} started at "
                                           f"{rec['start']} (chain time {now}) unapproved: "
                                           "propose a new version")
    st.put(T_TARIFF, tariff_key(name, version), {**rec, "regulator": regulator,
                                                  "approval": tx})

