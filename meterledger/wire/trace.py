"""Device and operator traceability (docs/PROTOCOL.md section 29; SOURCES 003 s2.2.6): the
`dv_*` kinds of the type-12 transaction (body schemas, ranges and rules, merged into
`meterledger.wire.chain`'s tables) and the fault-determination rule the chain applies and
an auditor reruns offline. Pure.

A device (a meter, a transformer, a breaker, ...) is named by 8 bytes: for a meter, its
SPEC id (the id of its key), so the fog's births and readings name the same device. Its
life cycle on the chain: a registration with its nameplate, status changes (installed at a
site, connected, disconnected, removed), maintenance records, firmware versions seen, and
operation tickets (requested by an operator, approved or rejected by the utility, executed
by the requester within the window), alarms for operations seen without an approved ticket,
and the determination of a fault's cause.

The fault rule (`determine`) classifies a fault detected at F from the device's record:
1. `user_misoperation`: an alarm of the device observed in [F - ALARM_WINDOW_S, F];
2. `poor_maintenance`: else, the last maintenance recorded at or before F found a defect it
   left, or it (the commissioning, if none) is older than the device's `maintain_s` at F;
3. `equipment_quality`: else, the device is within its warranty at F (commissioning +
   `warranty_s`);
4. `ageing`: else (out of warranty, maintained and operated as required: wear, no one's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire.schema import TIME_MAX, Range

DV_REGISTER, DV_STATUS, DV_MAINTAIN, DV_FIRMWARE = ("dv_register", "dv_status", "dv_maintain",
                                                    "dv_firmware")
DV_TICKET, DV_APPROVE, DV_EXECUTE = "dv_ticket", "dv_approve", "dv_execute"
DV_ALARM, DV_DETERMINE = "dv_alarm", "dv_determine"
KINDS = (DV_REGISTER, DV_STATUS, DV_MAINTAIN, DV_FIRMWARE, DV_TICKET, DV_APPROVE, DV_EXECUTE,
         DV_ALARM, DV_DETERMINE)

# a device's status: registered, then installed (at a site), connected <-> disconnected,
# removed (after a disconnection), installed again elsewhere
REGISTERED, INSTALLED, CONNECTED, DISCONNECTED, REMOVED = (
    "registered", "installed", "connected", "disconnected", "removed")
STATUSES = (INSTALLED, CONNECTED, DISCONNECTED, REMOVED)  # what a dv_status may set
# the status a change may come from
FROM: dict[str, tuple[str, ...]] = {
    INSTALLED: (REGISTERED, REMOVED), CONNECTED: (INSTALLED, DISCONNECTED),
    DISCONNECTED: (CONNECTED,), REMOVED: (INSTALLED, DISCONNECTED)}
# a maintenance's result: `defect` found and left (awaiting parts, a later visit)
OK, REPAIRED, REPLACED, DEFECT = "ok", "repaired", "replaced", "defect"
RESULTS = (OK, REPAIRED, REPLACED, DEFECT)
# the operations a ticket asks for (an alarm names one of them, or `unknown`)
OPS = ("switch_on", "switch_off", "isolate", "inspect", "maintain", "repair", "replace",
       "calibrate", "firmware", "test", "install", "remove")
UNKNOWN_OP = "unknown"
DONE, FAILED, ABORTED = "done", "failed", "aborted"  # an execution's result
OUTCOMES = (DONE, FAILED, ABORTED)
MISOPERATION, POOR_MAINTENANCE = "user_misoperation", "poor_maintenance"
QUALITY, AGEING = "equipment_quality", "ageing"
CAUSES = (MISOPERATION, POOR_MAINTENANCE, QUALITY, AGEING)

_DAY, _YEAR = 86_400, 365 * 86_400
ALARM_WINDOW_S = _DAY  # an alarm up to a day before a fault makes it a misoperation
ALARM_REPORT_S = 900  # an alarm is on the chain within a quarter hour of the fault
TICKET_MAX_S = 7 * _DAY  # an operation ticket's window, at most
WARRANTY_MAX_S = 50 * _YEAR
MAINTAIN_S = (_DAY, 10 * _YEAR)  # a device's maintenance interval
FAULT_MAX = 3584  # a fault transaction's bytes: it travels inside a 4096-byte message
NOTE_MAX = 255
NAME_MAX = 64
KIND_TOKEN = re.compile(r"[a-z][a-z0-9_-]{0,15}")

BODIES: dict[str, dict[int, str]] = {
    # dev, kind, manufacturer, model, serial, made, commissioned, rated V, A, W, phases,
    # warranty (s from commissioning), maintenance interval (s)
    DV_REGISTER: {1: "b8", 2: "t", 3: "t", 4: "t", 5: "t", 6: "u", 7: "u", 8: "u", 9: "u",
                  10: "u", 11: "u", 12: "u", 13: "u"},
    # dev, status, site, feeder, fog (an installation's), note
    DV_STATUS: {1: "b8", 2: "t", 3: "t?", 4: "t?", 5: "b8?", 6: "t"},
    DV_MAINTAIN: {1: "b8", 2: "t", 3: "t", 4: "t", 5: "b32?"},  # dev, what, result, detail,
                                                                 # the ticket it was done under
    DV_FIRMWARE: {1: "b8", 2: "t", 3: "t", 4: "u", 5: "b32?"},  # dev, fw, hw, seen, birth
    DV_TICKET: {1: "b8", 2: "t", 3: "t", 4: "u", 5: "u"},  # dev, op, reason, start, end
    DV_APPROVE: {1: "b32", 2: "u", 3: "t"},  # ticket, granted (1) or rejected (0), note
    DV_EXECUTE: {1: "b32", 2: "t", 3: "t"},  # ticket, result, detail
    DV_ALARM: {1: "b8", 2: "t", 3: "u", 4: "t", 5: "b8?"},  # dev, op, observed, detail, who
    DV_DETERMINE: {1: "b8", 2: "b", 3: "t", 4: "t"},  # dev, the fault tx, cause, detail
}
BODY_RANGES: dict[str, dict[int, Range]] = {
    DV_REGISTER: {2: (1, 16), 3: (1, NAME_MAX), 4: (1, NAME_MAX), 5: (1, NAME_MAX),
                  6: (0, TIME_MAX), 7: (0, TIME_MAX), 8: (0, 1_000_000), 9: (0, 100_000),
                  10: (0, 10**13), 11: (1, 3), 12: (0, WARRANTY_MAX_S), 13: MAINTAIN_S},
    DV_STATUS: {2: (7, 12), 3: (1, NAME_MAX), 4: (1, NAME_MAX), 6: (0, NOTE_MAX)},
    DV_MAINTAIN: {2: (1, NOTE_MAX), 3: (2, 8), 4: (0, NOTE_MAX)},
    DV_FIRMWARE: {2: (1, 64), 3: (0, 32), 4: (0, TIME_MAX)},
    DV_TICKET: {2: (4, 10), 3: (1, NOTE_MAX), 4: (0, TIME_MAX), 5: (0, TIME_MAX)},
    DV_APPROVE: {2: (0, 1), 3: (0, NOTE_MAX)},
    DV_EXECUTE: {2: (4, 7), 3: (0, NOTE_MAX)},
    DV_ALARM: {2: (4, 10), 3: (0, TIME_MAX), 4: (0, NOTE_MAX)},
    DV_DETERMINE: {2: (1, FAULT_MAX), 3: (6, 17), 4: (0, NOTE_MAX)},
}
BODY_NAMES: dict[str, dict[int, str]] = {
    DV_REGISTER: {1: "dev", 2: "kind", 3: "manufacturer", 4: "model", 5: "serial",
                  6: "made", 7: "commissioned", 8: "rated_v", 9: "rated_a", 10: "rated_w",
                  11: "phases", 12: "warranty_s", 13: "maintain_s"},
    DV_STATUS: {1: "dev", 2: "status", 3: "site", 4: "feeder", 5: "fog", 6: "note"},
    DV_MAINTAIN: {1: "dev", 2: "what", 3: "result", 4: "detail", 5: "ticket"},
    DV_FIRMWARE: {1: "dev", 2: "fw", 3: "hw", 4: "seen", 5: "birth"},
    DV_TICKET: {1: "dev", 2: "op", 3: "reason", 4: "start", 5: "end"},
    DV_APPROVE: {1: "ticket", 2: "granted", 3: "note"},
    DV_EXECUTE: {1: "ticket", 2: "result", 3: "detail"},
    DV_ALARM: {1: "dev", 2: "op", 3: "observed", 4: "detail", 5: "who"},
    DV_DETERMINE: {1: "dev", 2: "fault", 3: "cause", 4: "detail"},
}


def _bad(kind: str, msg: str) -> ProtocolError:
    return ProtocolError("bad_fields", f"{kind} body: {msg}")


def _one_of(kind: str, key: int, name: str, choices: Sequence[str]) -> Callable[
        [dict[int, Any]], None]:
    def rule(body: dict[int, Any]) -> None:
        if body[key] not in choices:
            raise _bad(kind, f"{name} must be one of {', '.join(choices)}, not {body[key]!r}")
    return rule


def _printable(kind: str, body: dict[int, Any], keys: Sequence[int]) -> None:
    names = BODY_NAMES[kind]
    for k in keys:
        v = body.get(k)
        if v is not None and (not v.isprintable() or v.strip() != v):
            raise _bad(kind, f"{names[k]} must be printable, without surrounding spaces")


def _register_rule(body: dict[int, Any]) -> None:
    if not KIND_TOKEN.fullmatch(body[2]):
        raise _bad(DV_REGISTER, f"kind {body[2]!r} must be a lowercase word (a-z, 0-9, _ "
                                "and -, from a letter), e.g. meter or transformer")
    _printable(DV_REGISTER, body, (3, 4, 5))
    if body[6] > body[7]:
        raise _bad(DV_REGISTER, f"made ({body[6]}) is after commissioned ({body[7]})")


def _status_rule(body: dict[int, Any]) -> None:
    _one_of(DV_STATUS, 2, "status", STATUSES)(body)
    placed = [k for k in (3, 4, 5) if k in body]
    if body[2] == INSTALLED and 3 not in body:
        raise _bad(DV_STATUS, "an installation names its site (field 3)")
    if body[2] != INSTALLED and placed:
        raise _bad(DV_STATUS, f"only an installation names a site, feeder or fog; a "
                              f"{body[2]} status does not (fields {placed})")
    _printable(DV_STATUS, body, (3, 4, 6))


def _maintain_rule(body: dict[int, Any]) -> None:
    _one_of(DV_MAINTAIN, 3, "result", RESULTS)(body)
    _printable(DV_MAINTAIN, body, (2, 4))


def _firmware_rule(body: dict[int, Any]) -> None:
    _printable(DV_FIRMWARE, body, (2, 3))


def _ticket_rule(body: dict[int, Any]) -> None:
    _one_of(DV_TICKET, 2, "op", OPS)(body)
    _printable(DV_TICKET, body, (3,))
    if not 0 < body[5] - body[4] <= TICKET_MAX_S:
        raise _bad(DV_TICKET, f"a ticket's window ends after it starts, within "
                              f"{TICKET_MAX_S // _DAY} days")


def _alarm_rule(body: dict[int, Any]) -> None:
    _one_of(DV_ALARM, 2, "op", (*OPS, UNKNOWN_OP))(body)
    _printable(DV_ALARM, body, (4,))


def _note_rule(kind: str, key: int) -> Callable[[dict[int, Any]], None]:
    def rule(body: dict[int, Any]) -> None:
        _printable(kind, body, (key,))
    return rule


def _execute_rule(body: dict[int, Any]) -> None:
    _one_of(DV_EXECUTE, 2, "result", OUTCOMES)(body)
    _printable(DV_EXECUTE, body, (3,))


def _determine_rule(body: dict[int, Any]) -> None:
    _one_of(DV_DETERMINE, 3, "cause", CAUSES)(body)
    _printable(DV_DETERMINE, body, (4,))


BODY_RULES: dict[str, Callable[[dict[int, Any]], None]] = {
    DV_REGISTER: _register_rule, DV_STATUS: _status_rule, DV_MAINTAIN: _maintain_rule,
    DV_FIRMWARE: _firmware_rule, DV_TICKET: _ticket_rule,
    DV_APPROVE: _note_rule(DV_APPROVE, 3), DV_EXECUTE: _execute_rule, DV_ALARM: _alarm_rule,
    DV_DETERMINE: _determine_rule}


# --- builders -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Nameplate:
    """What a device's registration states: its maker, its ratings, its service terms."""

    kind: str
    manufacturer: str
    model: str
    serial: str
    made: int  # unix s
    commissioned: int  # unix s: the warranty and the first maintenance interval run from it
    rated_v: int = 230  # V
    rated_a: int = 60  # A
    rated_w: int = 0  # W
    phases: int = 1
    warranty_s: int = 5 * _YEAR
    maintain_s: int = 2 * _YEAR


def register_body(dev: bytes, n: Nameplate) -> dict[int, Any]:
    return {1: dev, 2: n.kind, 3: n.manufacturer, 4: n.model, 5: n.serial, 6: n.made,
            7: n.commissioned, 8: n.rated_v, 9: n.rated_a, 10: n.rated_w, 11: n.phases,
            12: n.warranty_s, 13: n.maintain_s}


def status_body(dev: bytes, status: str, site: str | None = None, feeder: str | None = None,
                fog: bytes | None = None, note: str = "") -> dict[int, Any]:
    body: dict[int, Any] = {1: dev, 2: status, 6: note}
    for k, v in ((3, site), (4, feeder), (5, fog)):
        if v is not None:
            body[k] = v
    return body


def maintain_body(dev: bytes, what: str, result: str, detail: str = "",
                  ticket: bytes | None = None) -> dict[int, Any]:
    body: dict[int, Any] = {1: dev, 2: what, 3: result, 4: detail}
    if ticket is not None:
        body[5] = ticket
    return body


def firmware_body(dev: bytes, fw: str, hw: str, seen: int,
                  birth: bytes | None = None) -> dict[int, Any]:
    body: dict[int, Any] = {1: dev, 2: fw, 3: hw, 4: seen}
    if birth is not None:
        body[5] = birth
    return body


def ticket_body(dev: bytes, op: str, reason: str, start: int, end: int) -> dict[int, Any]:
    return {1: dev, 2: op, 3: reason, 4: start, 5: end}


def approve_body(ticket: bytes, granted: bool = True, note: str = "") -> dict[int, Any]:
    return {1: ticket, 2: int(granted), 3: note}


def execute_body(ticket: bytes, result: str = DONE, detail: str = "") -> dict[int, Any]:
    return {1: ticket, 2: result, 3: detail}


def alarm_body(dev: bytes, op: str, observed: int, detail: str = "",
               who: bytes | None = None) -> dict[int, Any]:
    body: dict[int, Any] = {1: dev, 2: op, 3: observed, 4: detail}
    if who is not None:
        body[5] = who
    return body


def determine_body(dev: bytes, fault: bytes, cause: str, detail: str = "") -> dict[int, Any]:
    return {1: dev, 2: fault, 3: cause, 4: detail}


# --- the fault rule -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """What decided a determination: its cause and the record (transaction digest) that
    decided it; the registration for the warranty and ageing classes."""

    cause: str
    evidence: bytes


@dataclass(frozen=True)
class Maintenance:
    at: int  # the chain's time when it was recorded
    result: str
    tx: bytes


@dataclass(frozen=True)
class Alarm:
    observed: int  # when the operation was seen (the alarm's own field)
    tx: bytes
    at: int = 0  # the chain's time when it was recorded


def determine(fault_t: int, commissioned: int, warranty_s: int, maintain_s: int,
              registration: bytes, maintenance: Sequence[Maintenance],
              alarms: Sequence[Alarm]) -> Evidence:
    """The cause of a fault detected at `fault_t` from the device's record (module doc):
    `maintenance` and `alarms` in chain order. Deterministic: integers and order only."""
    # an alarm counts if it was seen in the day before the fault and recorded by the time
    # the fault was, give or take a report's delay: one entered later (its observed time is
    # its sender's word) cannot shift the blame after the fact
    near = [a for a in alarms if fault_t - ALARM_WINDOW_S <= a.observed <= fault_t
            and a.at <= fault_t + ALARM_REPORT_S]
    if near:
        return Evidence(MISOPERATION, max(near, key=lambda a: a.observed).tx)
    before = [m for m in maintenance if m.at <= fault_t]
    last = before[-1] if before else None
    since = last.at if last is not None else commissioned
    if last is not None and last.result == DEFECT:
        return Evidence(POOR_MAINTENANCE, last.tx)
    if fault_t - since > maintain_s:
        return Evidence(POOR_MAINTENANCE, last.tx if last is not None else registration)
    if fault_t - commissioned <= warranty_s:
        return Evidence(QUALITY, registration)
    return Evidence(AGEING, registration)
