"""Feeders and their cooked interval data: pure functions over per-meter interval results.

A feeder (or transformer) groups meters; one meter may be declared its head, measuring what
enters the feeder. For one interval the fog knows, per member, its energy (measured, or
estimated from a type-10 entry) or nothing (missing), plus the flags and voltages of its
readings. From those this module builds the feeder's type-11 aggregate payload (docs/PROTOCOL.md
section 18), with its alerts, and the local faults the fog reports to the dispatch chain.

Privacy: only aggregates leave the fog. A feeder with fewer members than `privacy_min_meters`
is merged with the other small feeders into one group named MERGED; if that group is still too
small, it is suppressed (counted, never sent), so no household's load can be read off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meterledger import errors
from meterledger import wire as P

MERGED = "merged"  # the name of the group of feeders too small to report on their own
DEFAULT_FEEDER = "all"  # every meter, when no feeder is configured
OTHER_FEEDER = "other"  # meters no configured feeder lists

MEASURED, ESTIMATED, MISSING = "measured", "estimated", "missing"


class FeederConfigError(errors.ConfigError):
    """A feeder configuration that cannot be used; the message says which entry and why."""


@dataclass(frozen=True)
class Feeder:
    name: str
    meters: tuple[bytes, ...]
    head: bytes | None = None


@dataclass(frozen=True)
class FeederRules:
    """Thresholds of the feeder alerts (docs/PROTOCOL.md section 18)."""

    privacy_min_meters: int = 5
    loss_alert_pct: float = 8.0  # |loss| above this share of the head's import ...
    loss_alert_min_wh: int = 100  # ... and above this many Wh raises loss_high / loss_negative
    outage_pct: float = 50.0  # members with POWER_FAIL or silent, share that makes an outage
    voltage_low_dv: int = 2070  # 207.0 V: EN 50160's -10 % of 230 V
    voltage_high_dv: int = 2530  # 253.0 V: +10 %

    def __post_init__(self) -> None:
        if self.privacy_min_meters < 1:
            raise FeederConfigError("privacy_min_meters must be >= 1")
        if not 0 < self.outage_pct <= 100 or self.loss_alert_pct < 0:
            raise FeederConfigError("outage_pct must be in (0, 100], loss_alert_pct >= 0")
        if self.voltage_low_dv >= self.voltage_high_dv:
            raise FeederConfigError("voltage_low_dv must be below voltage_high_dv")


@dataclass(frozen=True)
class MeterInterval:
    """One meter's share of one interval, as the fog knows it."""

    dev: bytes
    status: str  # MEASURED, ESTIMATED or MISSING
    imp: int = 0
    exp: int = 0
    flags: int = 0  # OR of the flags of the meter's readings in the interval
    v_min: int | None = None  # 0.1 V, from the readings' q
    v_max: int | None = None
    leaves: tuple[int, ...] = ()  # log indices of the readings in the interval
    silent: bool = False  # no reading of the meter in the interval at all
    # unless missing: log indices of what the energy came from, ascending (the readings of
    # the measured pairs, from the interval's start to its end, and the live estimates)
    used: tuple[int, ...] = ()


@dataclass(frozen=True)
class Fault:
    """A local fault the fog found in one interval's data (SPEC section 8 `fault`)."""

    kind: str  # "outage", "voltage_low", "voltage_high", "tamper", "loss_high", ...
    feeder: str
    ivl: int
    detail: str
    devs: tuple[bytes, ...] = ()
    entries: tuple[int, ...] = ()  # log indices of the readings that show it


@dataclass
class Group:
    """What one aggregate reports on: a feeder, or the merged small feeders."""

    name: str
    members: list[bytes]
    head: bytes | None = None
    merged: list[str] = field(default_factory=list)


def parse_feeders(doc: object) -> list[Feeder]:
    """Feeders from config: a list of {"name", "meters": [hex ids], "head"?: hex id}."""
    if not isinstance(doc, list):
        raise FeederConfigError("feeders: expected a list of tables")
    out: list[Feeder] = []
    seen_names: set[str] = set()
    seen: dict[bytes, str] = {}
    for i, item in enumerate(doc):
        where = f"feeders[{i}]"
        if not isinstance(item, dict):
            raise FeederConfigError(f"{where}: expected a table")
        unknown = set(item) - {"name", "meters", "head"}
        if unknown:
            raise FeederConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        name = item.get("name")
        if not isinstance(name, str) or not name or name in (MERGED, OTHER_FEEDER, DEFAULT_FEEDER):
            raise FeederConfigError(f"{where}: name must be a non-empty string other than "
                                    f"{MERGED!r}, {OTHER_FEEDER!r} and {DEFAULT_FEEDER!r}")
        if name in seen_names:
            raise FeederConfigError(f"{where}: feeder {name!r} is defined twice")
        seen_names.add(name)
        meters = item.get("meters", [])
        if not isinstance(meters, list):
            raise FeederConfigError(f"{where}: meters must be a list of meter ids (hex)")
        ids = [_dev(m, f"{where}.meters") for m in meters]
        head = _dev(item["head"], f"{where}.head") if "head" in item else None
        for dev in ids + ([head] if head else []):
            if dev in seen:
                raise FeederConfigError(f"{where}: meter {dev.hex()} is in feeder {seen[dev]!r} "
                                        "already")
            seen[dev] = name
        out.append(Feeder(name, tuple(ids), head))
    return out


def _dev(value: object, where: str) -> bytes:
    try:
        dev = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        dev = b""
    if len(dev) != 8:
        raise FeederConfigError(f"{where}: {value!r} is not a meter id (16 hex characters)")
    return dev


def groups(feeders: Sequence[Feeder], active: Iterable[bytes], min_meters: int,
           ) -> tuple[list[Group], list[str]]:
    """The groups to report on, in name order, and the names of suppressed ones.

    Members are the active meters a feeder lists (its head excluded); active meters no feeder
    lists form OTHER_FEEDER (all of them form DEFAULT_FEEDER when no feeder is configured).
    Feeders below min_meters are merged into MERGED; a MERGED below it is suppressed."""
    live = set(active)
    listed: set[bytes] = set()
    found: list[Group] = []
    for f in feeders:
        members = sorted(d for d in f.meters if d in live)
        listed.update(f.meters)
        if f.head is not None:
            listed.add(f.head)
        found.append(Group(f.name, members, f.head if f.head in live else None))
    rest = sorted(live - listed)
    if rest or not feeders:
        found.append(Group(OTHER_FEEDER if feeders else DEFAULT_FEEDER, rest))
    big = [g for g in found if len(g.members) >= min_meters]
    small = [g for g in found if len(g.members) < min_meters and g.members]
    suppressed: list[str] = []
    if small:
        merged = Group(MERGED, sorted(d for g in small for d in g.members),
                       merged=sorted(g.name for g in small))
        if len(merged.members) >= min_meters:
            big.append(merged)
        else:
            suppressed = merged.merged
    return sorted(big, key=lambda g: g.name), suppressed


def members_digest(members: Iterable[bytes]) -> bytes:
    """The aggregate's commitment to who is in the group: SHA-256 of the sorted ids."""
    return hashlib.sha256(b"".join(sorted(members))).digest()


@dataclass(frozen=True)
class Cooked:
    """A group's interval, before signing: the aggregate's fields and the faults found."""

    fields: P.Fields  # without 14 size, 15 prev, 16 rev, 18 replaces, 17 fog
    faults: list[Fault]


def cook(group: Group, ivl: int, dur: int, data: Mapping[bytes, MeterInterval],
         rules: FeederRules, joined: frozenset[bytes] = frozenset()) -> Cooked:
    """The aggregate fields of `group` for the interval ending at ivl, and its faults.

    `data` maps each member (and the head) to its MeterInterval; a meter without one is
    missing and silent. A silent member in `joined` (enrolled after the interval began)
    counts as silent but not as down: no outage for meters nobody expected to hear from."""
    mine = [data.get(d) or MeterInterval(d, MISSING, silent=True) for d in group.members]
    covered = [m for m in mine if m.status != MISSING]
    imp = sum(m.imp for m in covered)
    exp = sum(m.exp for m in covered)
    est = [m for m in covered if m.status == ESTIMATED]
    f: P.Fields = {0: P.AGGREGATE, 1: group.name, 2: ivl, 3: dur, 4: imp, 5: exp,
                   6: len(mine), 7: len(covered) - len(est), 8: len(est),
                   9: sum(m.imp + m.exp for m in est), 19: members_digest(group.members)}
    if group.merged:
        f[20] = list(group.merged)
    alerts: set[str] = set()
    faults: list[Fault] = []

    def fault(kind: str, detail: str, who: list[MeterInterval]) -> None:
        alerts.add(kind)
        faults.append(Fault(kind, group.name, ivl, detail, tuple(m.dev for m in who),
                            tuple(sorted(i for m in who for i in m.leaves))))

    head = data.get(group.head) if group.head is not None else None
    if head is not None and head.status != MISSING and len(covered) == len(mine) and mine:
        loss = (head.imp - head.exp) - (imp - exp)
        f[10] = loss
        bound = max(rules.loss_alert_pct / 100 * head.imp, rules.loss_alert_min_wh)
        if loss > bound:
            fault("loss_high", f"feeder loss {loss} Wh of {head.imp} Wh supplied: possible "
                  "theft or a fault", [head])
        elif -loss > bound:
            fault("loss_negative", f"members used {-loss} Wh more than the head meter "
                  "measured: head meter or feeder membership is wrong", [head])
    volts = [m for m in mine if m.v_min is not None and m.v_max is not None]
    if volts:
        f[11] = min(m.v_min for m in volts if m.v_min is not None)
        f[12] = max(m.v_max for m in volts if m.v_max is not None)
        low = [m for m in volts if m.v_min is not None and m.v_min < rules.voltage_low_dv]
        high = [m for m in volts if m.v_max is not None and m.v_max > rules.voltage_high_dv]
        if low:
            fault("voltage_low", f"{len(low)} meter(s) saw under {rules.voltage_low_dv / 10:g} V "
                  f"(lowest {f[11] / 10:g} V)", low)
        if high:
            fault("voltage_high", f"{len(high)} meter(s) saw over {rules.voltage_high_dv / 10:g} "
                  f"V (highest {f[12] / 10:g} V)", high)
    down = [m for m in mine if (m.silent and m.dev not in joined) or m.flags & P.POWER_FAIL]
    if mine and len(down) * 100 >= rules.outage_pct * len(mine):
        fault("outage", f"{len(down)} of {len(mine)} meters lost supply or went silent",
              down)
    elif any(m.silent for m in mine):
        alerts.add("silent")  # in the aggregate, not a fault: a meter's link may be down
    tampered = [m for m in mine if m.flags & P.TAMPER]
    if tampered:
        fault("tamper", f"{len(tampered)} meter(s) report tampering", tampered)
    f[13] = sorted(alerts)
    return Cooked(f, faults)


def same_content(a: P.Fields, b: P.Fields) -> bool:
    """Whether two aggregates of one group and interval report the same cooked data (the
    bookkeeping fields size, prev, rev and replaces aside)."""
    skip = (14, 15, 16, 17, 18)
    return {k: v for k, v in a.items() if k not in skip} == \
        {k: v for k, v in b.items() if k not in skip}
