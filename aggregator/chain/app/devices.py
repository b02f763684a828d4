"""Devices, operation tickets and fault determinations on the chain (docs/PROTOCOL.md
section 29; SOURCES 003 s2.2.6): each device's life cycle as a timeline of the transactions
that made it, every one signed by an identity-bound key (an `operator` is a person, named
at registration by the dispatch key).

Application records:

    dv.device         dev                 -> the registration (nameplate fields by name,
                                             "registrar", "tx", "at"), "status", "n" (events
                                             so far), an installation's "site" (and
                                             "feeder", "fog"), the last "fw" and "hw" seen,
                                             the last maintenance's "maintained" and "result"
    dv.event          dev || n (8 bytes)  -> {"kind", "tx", "by", "at", "body"} (a
                                             determination's also "evidence" and
                                             "fault_t"), n from 1
    dv.ticket         ticket (its digest) -> {"dev", "op", "operator", "start", "end",
                                             "state", and once decided "approver",
                                             "approval", once executed "execution",
                                             "result"}
    dv.devticket      dev || ticket       -> 1
    dv.determination  fault || dev        -> {"cause", "tx", "by", "at", "evidence",
                                             "fault_t"}

`at` is the chain's time when the record was accepted (State.chain_time: the newest block's
time before the transaction's own), the only clock the rules read. A determination's body
on the timeline names the fault by its digest, not its bytes.
"""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.ledger import ChainError, Participant
from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.wire import chain as C
from meterledger.wire import trace as DV

T_DEVICE, T_EVENT, T_TICKET = "dv.device", "dv.event", "dv.ticket"
T_DEVTICKET, T_DETERMINATION = "dv.devticket", "dv.determination"
REQUESTED, APPROVED, REJECTED, EXECUTED = "requested", "approved", "rejected", "executed"
_PLATE = DV.BODY_NAMES[DV.DV_REGISTER]


def allowed(sender: Participant, kind: str, roles: tuple[str, ...]) -> None:
    """`not_permitted` unless the sender has one of `roles` (kinds more than one role may
    send)."""
    if sender.role not in roles:
        raise ChainError("not_permitted", f"a {kind} comes from a {' or '.join(roles)}; "
                                          f"{sender.id.hex()} is a {sender.role}")


def device(st: G.Staged, dev: bytes) -> dict[str, Any]:
    rec = st.get(T_DEVICE, dev)
    if rec is None:
        raise ChainError("unknown_device", f"no device {dev.hex()} is registered (dv_register)")
    return dict(rec)


def _event(st: G.Staged, dev: bytes, rec: dict[str, Any], kind: str, tx: bytes, by: bytes,
           now: int, body: dict[int, Any], **extra: Any) -> None:
    """Append one record to the device's timeline and save the device."""
    rec["n"] += 1
    st.put(T_EVENT, dev + G.u64(rec["n"]), {"kind": kind, "tx": tx, "by": by, "at": now,
                                            "body": body, **extra})
    st.put(T_DEVICE, dev, rec)


def register(st: G.Staged, operator: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """A device's registration: its nameplate, once (records are append-only)."""
    dev = body[1]
    known = st.get(T_DEVICE, dev)
    if known is not None:
        raise ChainError("device_registered", f"device {dev.hex()} was registered by "
                                              f"transaction {known['tx'].hex()}")
    rec = {_PLATE[k]: v for k, v in sorted(body.items()) if k != 1}
    rec.update(registrar=operator, tx=tx, at=now, status=DV.REGISTERED, n=0)
    _event(st, dev, rec, DV.DV_REGISTER, tx, operator, now, body)


def status(st: G.Staged, operator: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """An installation or connection status change, in the order of DV.FROM."""
    dev, new = body[1], body[2]
    rec = device(st, dev)
    if rec["status"] not in DV.FROM[new]:
        raise ChainError("device_state", f"device {dev.hex()} is {rec['status']}: it becomes "
                                         f"{new} only when {' or '.join(DV.FROM[new])}")
    rec["status"] = new
    if new in (DV.INSTALLED, DV.REMOVED):
        for name in ("site", "feeder", "fog"):
            rec.pop(name, None)
    if new == DV.INSTALLED:
        rec.update({DV.BODY_NAMES[DV.DV_STATUS][k]: body[k] for k in (3, 4, 5) if k in body})
    _event(st, dev, rec, DV.DV_STATUS, tx, operator, now, body)


def ticket(st: G.Staged, digest: bytes) -> dict[str, Any]:
    rec = st.get(T_TICKET, digest)
    if rec is None:
        raise ChainError("ticket_unknown", f"no operation ticket {digest.hex()} was requested "
                                           "(dv_ticket)")
    return dict(rec)


def maintain(st: G.Staged, operator: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """A maintenance record; one naming a ticket was done under it: the device's, the
    sender's, approved."""
    dev = body[1]
    rec = device(st, dev)
    if 5 in body:
        t = ticket(st, body[5])
        if t["dev"] != dev:
            raise ChainError("ticket_unknown", f"ticket {body[5].hex()} is for device "
                                               f"{t['dev'].hex()}, not {dev.hex()}")
        if t["operator"] != operator:
            raise ChainError("not_ticket_holder", f"ticket {body[5].hex()} is "
                                                  f"{t['operator'].hex()}'s")
        if t["state"] not in (APPROVED, EXECUTED):
            raise ChainError("ticket_not_approved", f"ticket {body[5].hex()} is {t['state']}")
    rec.update(maintained=now, result=body[3])
    _event(st, dev, rec, DV.DV_MAINTAIN, tx, operator, now, body)


def firmware(st: G.Staged, sender: bytes, body: dict[int, Any], tx: bytes, now: int,
             fog: bool = False) -> None:
    """A firmware version seen on the device (a meter's birth, an operator's reading): a
    change only, so the timeline shows each version once per change. A fog's record of the
    version the device already runs (an operator recorded it between the fog's read and
    this transaction) is accepted with no effect: a fog's refused transaction halts its
    whole outbox, anchors included (docs/PROTOCOL.md section 29, "What the fog reports")."""
    dev = body[1]
    rec = device(st, dev)
    if (rec.get("fw"), rec.get("hw")) == (body[2], body[3]):
        if fog:
            return  # a no-op: the transaction is in its block, the timeline unchanged
        raise ChainError("firmware_repeated", f"device {dev.hex()} already runs firmware "
                                              f"{body[2]!r} on hardware {body[3]!r}")
    rec.update(fw=body[2], hw=body[3])
    _event(st, dev, rec, DV.DV_FIRMWARE, tx, sender, now, body)


def request(st: G.Staged, operator: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """An operation ticket: an operator asks to do `op` on the device within [start, end];
    its id is the transaction's digest."""
    dev = body[1]
    rec = device(st, dev)
    if body[5] <= now:
        raise ChainError("ticket_expired", f"the window ends at {body[5]}, not after the "
                                           f"chain time {now}")
    st.put(T_TICKET, tx, {"dev": dev, "op": body[2], "operator": operator, "start": body[4],
                          "end": body[5], "state": REQUESTED})
    st.put(T_DEVTICKET, dev + tx, 1)
    _event(st, dev, rec, DV.DV_TICKET, tx, operator, now, body)


def approve(st: G.Staged, utility: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """The utility's decision on a requested ticket (granted or rejected), before its
    window ends."""
    digest = body[1]
    t = ticket(st, digest)
    if t["state"] != REQUESTED:
        raise ChainError("ticket_decided", f"ticket {digest.hex()} is {t['state']} already")
    if now > t["end"]:
        raise ChainError("ticket_expired", f"ticket {digest.hex()}'s window ended at "
                                           f"{t['end']}, before the chain time {now}")
    t.update(state=APPROVED if body[2] else REJECTED, approver=utility, approval=tx)
    st.put(T_TICKET, digest, t)
    _event(st, t["dev"], device(st, t["dev"]), DV.DV_APPROVE, tx, utility, now, body)


def execute(st: G.Staged, operator: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """The execution of an approved ticket by the operator who requested it, once, within
    its window (by the chain's time)."""
    digest = body[1]
    t = ticket(st, digest)
    if t["operator"] != operator:
        raise ChainError("not_ticket_holder", f"ticket {digest.hex()} is "
                                              f"{t['operator'].hex()}'s: only its requester "
                                              "executes it")
    if t["state"] == EXECUTED:
        raise ChainError("ticket_executed", f"ticket {digest.hex()} was executed by "
                                            f"{t['execution'].hex()}")
    if t["state"] != APPROVED:
        raise ChainError("ticket_not_approved", f"ticket {digest.hex()} is {t['state']}, not "
                                                "approved: an operation needs its approval")
    if now < t["start"]:
        raise ChainError("ticket_not_open", f"ticket {digest.hex()}'s window opens at "
                                            f"{t['start']}, after the chain time {now}")
    if now > t["end"]:
        raise ChainError("ticket_expired", f"ticket {digest.hex()}'s window ended at "
                                           f"{t['end']}, before the chain time {now}")
    t.update(state=EXECUTED, execution=tx, result=body[2])
    st.put(T_TICKET, digest, t)
    _event(st, t["dev"], device(st, t["dev"]), DV.DV_EXECUTE, tx, operator, now, body)


def alarm(st: G.Staged, sender: bytes, body: dict[int, Any], tx: bytes, now: int,
          fog: bool = False) -> None:
    """A dangerous-behaviour alarm: an operation seen on the device that no approved ticket
    of the same operation covered at the time it was seen. A fog's alarm such a ticket
    covers (one requested and approved after the fog looked) is accepted with no effect,
    not refused, and is no alarm: it stays off the timeline, which the fault rule reads."""
    dev, op, seen = body[1], body[2], body[3]
    rec = device(st, dev)
    who = body.get(5)
    if who is not None and st.state.participant(who) is None:
        raise ChainError("unknown_participant", f"who ({who.hex()}) is no participant")
    for key, _ in st.scan(T_DEVTICKET, dev):
        t = ticket(st, key[8:])
        if t["op"] == op and t["state"] in (APPROVED, EXECUTED) and \
                t["start"] <= seen <= t["end"]:
            if fog:
                return  # a no-op: the transaction is in its block, the timeline unchanged
            raise ChainError("operation_ticketed", f"{op} at {seen} was covered by approved "
                                                   f"ticket {key[8:].hex()}")
    _event(st, dev, rec, DV.DV_ALARM, tx, sender, now, body)


def fault_of(st: G.Staged, raw: bytes) -> tuple[bytes, int]:
    """The digest and detected time of a fault transaction on this chain (its bytes as a
    determination carries them); `unknown_fault` for anything else."""
    try:
        m = P.parse(raw, schema=False)
    except ProtocolError as e:
        raise ChainError("unknown_fault", f"the fault is no message: {e}") from None
    body = m.fields.get(4)
    if m.type != C.TX or m.fields.get(3) != C.FAULT or not isinstance(body, dict) or \
            body.get(3).__class__ is not int:
        raise ChainError("unknown_fault", "the transaction carried is no fault report")
    if st.state.receipt(m.digest) is None:
        raise ChainError("unknown_fault", f"fault {m.digest.hex()} is not on this chain (in a "
                                          "sealed block)")
    return m.digest, int(body[3])


def record_of(st: G.Staged, dev: bytes) -> tuple[list[DV.Maintenance], list[DV.Alarm]]:
    """The device's maintenance records and alarms, in chain order."""
    maint: list[DV.Maintenance] = []
    alarms: list[DV.Alarm] = []
    for _, ev in st.scan(T_EVENT, dev):
        if ev["kind"] == DV.DV_MAINTAIN:
            maint.append(DV.Maintenance(ev["at"], ev["body"][3], ev["tx"]))
        elif ev["kind"] == DV.DV_ALARM:
            alarms.append(DV.Alarm(ev["body"][3], ev["tx"], ev["at"]))
    return maint, alarms


def determine(st: G.Staged, sender: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """A fault's cause for one device, as the rule (DV.determine) finds it from the
    device's record: the submitted cause must be the rule's; once per fault and device."""
    dev, cause = body[1], body[3]
    rec = device(st, dev)
    digest, fault_t = fault_of(st, body[2])
    key = digest + dev
    done = st.get(T_DETERMINATION, key)
    if done is not None:
        raise ChainError("already_determined", f"fault {digest.hex()} on device {dev.hex()} "
                                               f"was determined by {done['tx'].hex()}")
    maint, alarms = record_of(st, dev)
    ev = DV.determine(fault_t, rec["commissioned"], rec["warranty_s"], rec["maintain_s"],
                      rec["tx"], maint, alarms)
    if ev.cause != cause:
        raise ChainError("determination_mismatch", f"the device's record makes fault "
                                                   f"{digest.hex()} a {ev.cause} (decided by "
                                                   f"{ev.evidence.hex()}), not {cause}")
    st.put(T_DETERMINATION, key, {"cause": cause, "tx": tx, "by": sender, "at": now,
                                  "evidence": ev.evidence, "fault_t": fault_t})
    _event(st, dev, rec, DV.DV_DETERMINE, tx, sender, now, {**body, 2: digest},
           evidence=ev.evidence, fault_t=fault_t)
