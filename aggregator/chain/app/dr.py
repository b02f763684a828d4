"""Home demand response on the chain (docs/PROTOCOL.md section 30; SOURCES 003 s2.2.5): a
utility's contract offers and a customer's acceptance (two signatures), the customer's
signed preferences, the utility's DR events, and the fog's report of each curtailed meter,
on which the chain itself computes the compensation and pays it in points from the
utility's market account to the customer's (`aggregator.chain.app.market`). The if-then
rule, the cap and the compensation are `meterledger.wire.dr`'s, shared with the fog.

Application records (integers in keys 8-byte big-endian, a pref's number 4 bytes):

    dr.offer     offer tx digest              -> {"utility", "customer", "meter", "fog",
                                                  "feeder", "threshold", "max_w", "floor_w",
                                                  "windows", "tz_min", "rate", "valid_from",
                                                  "valid_to", "t", "prefs" (how many), and
                                                  once accepted "accept" (its tx), "accepted"
                                                  (its chain time)}
    dr.customer  customer || offer            -> 1 (the customer's offers)
    dr.meter     fog || meter || offer        -> 1 (accepted contracts of a meter)
    dr.fogc      fog || valid_to || offer     -> 1 (accepted contracts, by their end)
    dr.pref      offer || n                   -> {"tx", "t", "op", and "event", or "from"
                                                  and "to" (a pause: from its t)}
    dr.event     event id                     -> {"utility", "tx", "price", "start", "end",
                                                  "targets", "note", "t"}
    dr.ends      end || event id              -> 1 (every event, by its end)
    dr.fogev     fog || end || event id       -> 1 (the events naming a fog, by end)
    dr.report    event id || meter            -> {"fog", "tx", "contract", "customer",
                                                  "utility", "limit_w", "commands",
                                                  "entries", "baseline", "measured",
                                                  "curtailed", "days", "missing_s", "why",
                                                  "wh_paid", "due", "paid", "owed", "t"}
    dr.owed      utility || event id || meter -> upt the utility still owes for the report

Nothing holds None (a record that does not apply leaves its field out) and every integer
fits int64: Wh <= 10^9 times a rate <= 10^8 mpt/kWh is at most 10^17 upt.
"""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.state import State
from aggregator.chain.ledger import FOG, ChainError
from meterledger.wire import dr as DR

T_OFFER, T_CUSTOMER, T_METER, T_FOGC = "dr.offer", "dr.customer", "dr.meter", "dr.fogc"
T_PREF, T_EVENT, T_ENDS, T_FOGEV = "dr.pref", "dr.event", "dr.ends", "dr.fogev"
T_REPORT, T_OWED = "dr.report", "dr.owed"
CUSTOMER_ROLES = ("holder", "market")  # who may be offered a contract
PREFS_MAX = 100  # preferences per contract
_OFFER_FIELDS = ("customer", "meter", "fog", "feeder", "threshold", "max_w", "floor_w",
                 "windows", "tz_min", "rate", "valid_from", "valid_to")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def offer_rec(st: G.Staged, offer: bytes) -> dict[str, Any]:
    rec = st.get(T_OFFER, offer)
    if rec is None:
        raise ChainError("unknown_offer", f"no dr_offer has transaction digest {offer.hex()}")
    return dict(rec)


def offer_body(rec: dict[str, Any]) -> dict[int, Any]:
    """An offer record's terms as the dr_offer body they came from."""
    return {i: rec[name] for i, name in enumerate(_OFFER_FIELDS, 1)}


def contract_of(rec: dict[str, Any]) -> DR.Contract:
    return DR.Contract.of(offer_body(rec), rec.get("accepted", -1), rec["utility"])


def event_of(rec: dict[str, Any], event: bytes) -> DR.Event:
    return DR.Event(event, rec["price"], rec["start"], rec["end"],
                    tuple((t[0], t[1]) for t in rec["targets"]), rec["utility"])


def pref_of(rec: dict[str, Any]) -> DR.Pref:
    return DR.Pref(rec["t"], rec["op"], rec.get("event", b""), rec.get("from", 0),
                   rec.get("to", 0))


def prefs(st: G.Staged, offer: bytes) -> list[DR.Pref]:
    return [pref_of(dict(r)) for _, r in st.scan(T_PREF, offer)]


# --- the contract: offer, acceptance, preferences ---------------------------------------------
def offer(st: G.Staged, state: State, utility: bytes, body: dict[int, Any], tx: bytes,
          now: int) -> None:
    """The utility's offer to a registered customer (a holder or market participant) for a
    meter of a registered fog, still valid after now."""
    customer, fog = body[1], body[3]
    p = state.participant(customer)
    if p is None or p.role not in CUSTOMER_ROLES:
        raise ChainError("unknown_participant", f"customer {customer.hex()} is not a "
                                                f"registered {' or '.join(CUSTOMER_ROLES)} "
                                                "participant")
    f = state.participant(fog)
    if f is None or f.role != FOG:
        raise ChainError("unknown_fog", f"{fog.hex()} is not a registered fog")
    if body[12] <= now:
        raise ChainError("offer_lapsed", f"the offer's validity ends at {body[12]}, not after "
                                         f"the chain time {now}")
    rec = {name: body[i] for i, name in enumerate(_OFFER_FIELDS, 1)}
    st.put(T_OFFER, tx, {**rec, "utility": utility, "t": now, "prefs": 0})
    st.put(T_CUSTOMER, customer + tx, 1)


def accept(st: G.Staged, customer: bytes, offer: bytes, tx: bytes, now: int) -> None:
    """The customer's signature on the offer: the contract is in force from valid_from to
    valid_to; a meter has one contract at a time."""
    rec = offer_rec(st, offer)
    if rec["customer"] != customer:
        raise ChainError("not_offered_to_you", f"offer {offer.hex()} was made to "
                                               f"{rec['customer'].hex()}, not {customer.hex()}")
    if "accept" in rec:
        raise ChainError("offer_taken", f"offer {offer.hex()} was accepted by transaction "
                                        f"{rec['accept'].hex()}")
    if rec["valid_to"] <= now:
        raise ChainError("offer_lapsed", f"offer {offer.hex()} was valid until "
                                         f"{rec['valid_to']}; the chain time is {now}")
    fog, meter = rec["fog"], rec["meter"]
    for key, _ in st.scan(T_METER, fog + meter):
        other = offer_rec(st, key[16:])
        if other["valid_from"] < rec["valid_to"] and rec["valid_from"] < other["valid_to"]:
            raise ChainError("meter_contracted", f"meter {meter.hex()} is under contract "
                                                 f"{key[16:].hex()} from {other['valid_from']} "
                                                 f"to {other['valid_to']}, which overlaps")
    st.put(T_OFFER, offer, {**rec, "accept": tx, "accepted": now})
    st.put(T_METER, fog + meter + offer, 1)
    st.put(T_FOGC, fog + G.u64(rec["valid_to"]) + offer, 1)


def pref(st: G.Staged, customer: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """The customer's preference on a contract in force: opt out of an event not yet ended,
    or of a window (a pause: from now) not yet past."""
    offer, op = body[1], body[2]
    rec = offer_rec(st, offer)
    if rec["customer"] != customer:
        raise ChainError("not_offered_to_you", f"contract {offer.hex()} is "
                                               f"{rec['customer'].hex()}'s, not "
                                               f"{customer.hex()}'s")
    if "accept" not in rec or rec["valid_to"] <= now:
        raise ChainError("contract_inactive", f"contract {offer.hex()} is not accepted, or "
                                              f"ended at {rec['valid_to']} (chain time {now})")
    if rec["prefs"] >= PREFS_MAX:
        raise ChainError("prefs_exhausted", f"contract {offer.hex()} has {PREFS_MAX} "
                                            "preferences, the most it takes")
    out: dict[str, Any] = {"tx": tx, "t": now, "op": op}
    if op == DR.SKIP_EVENT:
        ev = st.get(T_EVENT, body[3])
        if ev is None:
            raise ChainError("unknown_event", f"no DR event {body[3].hex()}")
        if ev["end"] <= now:
            raise ChainError("event_ended", f"event {body[3].hex()} ended at {ev['end']} "
                                            f"(chain time {now})")
        out["event"] = body[3]
    else:
        lo = body[4] if op == DR.SKIP_WINDOW else now
        if body[5] <= now:
            raise ChainError("pref_lapsed", f"the {op} ends at {body[5]}, not after the chain "
                                            f"time {now}")
        if body[5] - lo > DR.PREF_MAX_S:
            raise ChainError("bad_fields", f"dr_pref body: a pause lasts at most "
                                           f"{DR.PREF_MAX_S // 86_400} days")
        out.update({"from": lo, "to": body[5]})
    st.put(T_PREF, offer + u32(rec["prefs"]), out)
    st.put(T_OFFER, offer, {**rec, "prefs": rec["prefs"] + 1})


# --- events ---------------------------------------------------------------------------------------
def owes(st: G.Staged, utility: bytes) -> bytes | None:
    """The key of a report whose points the utility still owes, None if none."""
    for key, _ in st.walk(T_OWED, utility):
        return key
    return None


def event(st: G.Staged, state: State, utility: bytes, body: dict[int, Any], tx: bytes,
          now: int) -> None:
    """A DR event of the utility, starting after now, naming registered fogs; a utility
    that owes compensation calls no event until it has paid (dr_settle)."""
    eid, start, end, targets = body[1], body[3], body[4], body[5]
    if st.get(T_EVENT, eid) is not None:
        raise ChainError("event_exists", f"event id {eid.hex()} is taken")
    if start <= now:
        raise ChainError("event_started", f"the event would start at {start}, not after the "
                                          f"chain time {now}")
    fogs = sorted({t[0] for t in targets})
    for fog in fogs:
        f = state.participant(fog)
        if f is None or f.role != FOG:
            raise ChainError("unknown_fog", f"target {fog.hex()} is not a registered fog")
    owed = owes(st, utility)
    if owed is not None:
        raise ChainError("compensation_owed", f"{utility.hex()} owes the compensation of "
                                              f"event {owed[8:16].hex()}, meter "
                                              f"{owed[16:].hex()}: pay it (dr_settle) first")
    st.put(T_EVENT, eid, {"utility": utility, "tx": tx, "price": body[2], "start": start,
                          "end": end, "targets": targets, "note": body[6], "t": now})
    st.put(T_ENDS, G.u64(end) + eid, 1)
    for fog in fogs:
        st.put(T_FOGEV, fog + G.u64(end) + eid, 1)


# --- reports and compensation ----------------------------------------------------------------------
def why_unpaid(c: DR.Contract, e: DR.Event, ps: list[DR.Pref], body: dict[int, Any]) -> str:
    """"" when the report's meter is paid, else the first reason it is not: the if-then
    rule (DR.exclusion), the limit not done at the meter (no device response: 003's
    "device-response record"), measured data missing, no baseline day."""
    why = DR.exclusion(c, e, ps)
    if why:
        return why
    if body[5][0][1] != DR.DONE:
        return DR.NO_DEVICE_RESPONSE
    if body[11]:
        return DR.INCOMPLETE_DATA
    return "" if body[10] else DR.NO_BASELINE


def report(st: G.Staged, fog: bytes, body: dict[int, Any], tx: bytes, now: int) -> None:
    """The fog's report of one meter after an event: recorded once per (event, meter); the
    chain computes the compensation and pays what the utility's points cover, the rest is
    owed (a fog's report is evidence and is never refused for the utility's balance)."""
    eid, meter, offer = body[1], body[2], body[3]
    ev = st.get(T_EVENT, eid)
    if ev is None:
        raise ChainError("unknown_event", f"no DR event {eid.hex()}: no compensation without "
                                          "the event on the chain")
    rec = offer_rec(st, offer)
    if "accept" not in rec:
        raise ChainError("unknown_offer", f"offer {offer.hex()} was never accepted: no "
                                          "contract")
    if rec["fog"] != fog:
        raise ChainError("not_the_meters_fog", f"contract {offer.hex()}'s meter is fog "
                                               f"{rec['fog'].hex()}'s, not {fog.hex()}'s")
    if rec["meter"] != meter:
        raise ChainError("contract_mismatch", f"contract {offer.hex()} is meter "
                                              f"{rec['meter'].hex()}'s, not {meter.hex()}'s")
    if ev["end"] > now:
        raise ChainError("event_open", f"event {eid.hex()} ends at {ev['end']}, after the "
                                       f"chain time {now}: report it once it has ended")
    if st.get(T_REPORT, eid + meter) is not None:
        raise ChainError("report_repeated", f"meter {meter.hex()} was reported for event "
                                            f"{eid.hex()} already")
    e, c = event_of(dict(ev), eid), contract_of(rec)
    why = why_unpaid(c, e, prefs(st, offer), body)
    wh_paid, due = DR.compensation(c, e.start, e.end, body[9]) if not why else (0, 0)
    utility, customer = rec["utility"], rec["customer"]
    paid = min(due, M.account(st, utility)["balance"])
    if paid:
        M.debit(st, utility, paid, "DR compensation")
        M.credit(st, customer, paid)
    if due > paid:
        st.put(T_OWED, utility + eid + meter, due - paid)
    st.put(T_REPORT, eid + meter, {
        "fog": fog, "tx": tx, "contract": offer, "customer": customer, "utility": utility,
        "limit_w": body[4], "commands": body[5], "entries": body[6], "baseline": body[7],
        "measured": body[8], "curtailed": body[9], "days": body[10], "missing_s": body[11],
        "why": why, "wh_paid": wh_paid, "due": due, "paid": paid, "owed": due - paid,
        "t": now})


def settle(st: G.Staged, utility: bytes, eid: bytes, meter: bytes) -> None:
    """The utility pays what it owes for a report, in full."""
    rep = st.get(T_REPORT, eid + meter)
    if rep is None:
        raise ChainError("unknown_report", f"no report of meter {meter.hex()} for event "
                                           f"{eid.hex()}")
    rep = dict(rep)
    if rep["utility"] != utility:
        raise ChainError("not_permitted", f"the report's compensation is "
                                          f"{rep['utility'].hex()}'s to pay, not "
                                          f"{utility.hex()}'s")
    if not rep["owed"]:
        raise ChainError("nothing_owed", f"the compensation of meter {meter.hex()} for event "
                                         f"{eid.hex()} is paid")
    M.debit(st, utility, rep["owed"], "DR compensation owed")
    M.credit(st, rep["customer"], rep["owed"])
    st.put(T_REPORT, eid + meter, {**rep, "paid": rep["paid"] + rep["owed"], "owed": 0})
    st.put(T_OWED, utility + eid + meter, None)
