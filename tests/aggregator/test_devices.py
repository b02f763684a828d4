"""Device and operator traceability on the chain (docs/PROTOCOL.md section 29): a device's
registration, status, maintenance and firmware; operation tickets requested, approved and
executed within their window by their holder; alarms for operations no approved ticket
covered; fault determinations the chain computes from the device's record, one per cause
class; a reason for every refusal; replayed alike by verify-chain."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.store import BlockStore
from aggregator.chain.verify import check_derived, store_blocks, verify_blocks
from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire import trace as DV
from tests.kit.appchain import AppChain, open_store
from tests.kit.chainkit import T0

DISPATCH = P.SigningKey.from_int(0xD15)
ALICE, BOB = P.SigningKey.from_int(0xA11CE), P.SigningKey.from_int(0xB0B)
UTILITY, REGULATOR = P.SigningKey.from_int(0x0717), P.SigningKey.from_int(0x7E6)
DEV, DEV2, NOBODY = b"\x01" * 8, b"\x02" * 8, b"\x09" * 8
DAY, YEAR = 86_400, 365 * 86_400
METER = DV.Nameplate("meter", "ACME", "M-1", "S-0001", T0 - 60 * DAY, T0 - 30 * DAY,
                     warranty_s=5 * YEAR, maintain_s=YEAR)
TRANSFORMER = DV.Nameplate("transformer", "Volta", "T-400", "V-77", T0 - 4 * YEAR,
                           T0 - 3 * YEAR, rated_v=10_000, rated_a=40, rated_w=400_000,
                           phases=3, warranty_s=YEAR, maintain_s=YEAR)


class Devices(AppChain):
    def __init__(self, store: BlockStore, tmp_path: Path) -> None:
        self.now = T0 + 60
        super().__init__(store, tmp_path, DISPATCH, lambda: float(self.now))
        for role, key in (("operator", ALICE), ("operator", BOB), ("utility", UTILITY),
                          ("regulator", REGULATOR)):
            self.register(role, key)

    def tx(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> bytes:
        """Send and return the transaction's bytes (a ticket's id is its digest)."""
        p = self.ledger.participant(key.id)
        raw = P.sign1(key, C.tx(key.id, (p.nonce if p else 0) + 1, kind, body, T0,
                                self.operator.id))
        self.ledger.submit(raw)
        return raw

    def at(self, t: int) -> None:
        """Move the chain's time to t: a block sealed at t (a participant registered)."""
        self.now = t
        self.register("holder", P.SigningKey.generate())

    def ticket(self, op: str, start: int, end: int, key: P.SigningKey = ALICE,
               dev: bytes = DEV) -> bytes:
        return P.digest(self.tx(key, DV.DV_TICKET, DV.ticket_body(dev, op, "work", start, end)))

    def fault(self, t: int) -> bytes:
        return self.tx(self.fog.key, C.FAULT, C.fault_body("relay", "stuck", t, "isolated"))

    def device(self, dev: bytes = DEV) -> dict[str, Any]:
        return dict(self.store.record(DVS.T_DEVICE, dev))

    def timeline(self, dev: bytes = DEV) -> list[dict[str, Any]]:
        return [dict(self.store.record(DVS.T_EVENT, dev + G.u64(n)))
                for n in range(1, self.device(dev)["n"] + 1)]


@pytest.fixture(params=["memory", "sqlite"])
def dv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Devices]:
    d = Devices(open_store(request.param, tmp_path), tmp_path)
    yield d
    d.close()


def _installed(dv: Devices) -> None:
    dv.tx(ALICE, DV.DV_REGISTER, DV.register_body(DEV, METER))
    dv.tx(ALICE, DV.DV_STATUS, DV.status_body(DEV, DV.INSTALLED, "pole 17", "north",
                                              dv.fog.key.id))
    dv.tx(ALICE, DV.DV_STATUS, DV.status_body(DEV, DV.CONNECTED))


def test_a_device_is_registered_once_and_changes_status_in_order(dv: Devices) -> None:
    body = DV.register_body(DEV, METER)
    assert dv.refused(UTILITY, DV.DV_REGISTER, body) == "not_permitted"
    assert dv.refused(ALICE, DV.DV_REGISTER, {**body, 2: "Smart Meter"}) == "bad_fields"
    assert dv.refused(ALICE, DV.DV_REGISTER, {**body, 6: T0}) == "bad_fields"  # made later
    assert dv.refused(ALICE, DV.DV_STATUS, DV.status_body(DEV, DV.INSTALLED, "x")) == \
        "unknown_device"
    dv.tx(ALICE, DV.DV_REGISTER, body)
    assert dv.refused(BOB, DV.DV_REGISTER, body) == "device_registered"
    rec = dv.device()
    assert (rec["status"], rec["manufacturer"], rec["registrar"], rec["maintain_s"]) == (
        DV.REGISTERED, "ACME", ALICE.id, YEAR)
    assert dv.refused(ALICE, DV.DV_STATUS, DV.status_body(DEV, DV.CONNECTED)) == "device_state"
    assert dv.refused(ALICE, DV.DV_STATUS, {1: DEV, 2: DV.INSTALLED, 6: ""}) == "bad_fields"
    assert dv.refused(ALICE, DV.DV_STATUS, DV.status_body(DEV, DV.CONNECTED, "x")) == \
        "bad_fields"  # only an installation names a site
    steps = (DV.status_body(DEV, DV.INSTALLED, "pole 17", "north", dv.fog.key.id),
                       DV.status_body(DEV, DV.CONNECTED))
    for b in steps:
        dv.tx(BOB, DV.DV_STATUS, b)
    assert (dv.device()["status"], dv.device()["site"], dv.device()["fog"]) == (
        DV.CONNECTED, "pole 17", dv.fog.key.id)
    # removing a live device is refused: disconnect first
    assert dv.refused(ALICE, DV.DV_STATUS, DV.status_body(DEV, DV.REMOVED)) == "device_state"
    dv.tx(ALICE, DV.DV_STATUS, DV.status_body(DEV, DV.DISCONNECTED))
    dv.tx(ALICE, DV.DV_STATUS, DV.status_body(DEV, DV.REMOVED, note="to the workshop"))
    assert "site" not in dv.device() and dv.device()["status"] == DV.REMOVED
    kinds = [(e["kind"], e["by"]) for e in dv.timeline()]
    assert kinds == [(DV.DV_REGISTER, ALICE.id), *[(DV.DV_STATUS, BOB.id)] * 2,
                     *[(DV.DV_STATUS, ALICE.id)] * 2]
    replay = verify_blocks(store_blocks(dv.store))
    check_derived(dv.store, replay)


def test_firmware_changes_are_recorded_once_each(dv: Devices) -> None:
    _installed(dv)
    body = DV.firmware_body(DEV, "1.4.2", "rev-b", T0, b"\x5b" * 32)
    assert dv.refused(UTILITY, DV.DV_FIRMWARE, body) == "not_permitted"
    dv.tx(dv.fog.key, DV.DV_FIRMWARE, body)
    assert dv.refused(ALICE, DV.DV_FIRMWARE, body) == "firmware_repeated"
    n = dv.device()["n"]  # a fog's repeat (a race it cannot see) is a no-op, not refused
    dv.tx(dv.fog.key, DV.DV_FIRMWARE, body)
    assert dv.device()["n"] == n
    dv.tx(ALICE, DV.DV_FIRMWARE, DV.firmware_body(DEV, "1.5.0", "rev-b", T0 + 30))
    assert (dv.device()["fw"], dv.timeline()[-1]["by"]) == ("1.5.0", ALICE.id)


def test_a_ticket_is_approved_by_the_utility_and_executed_once_by_its_holder(
        dv: Devices) -> None:
    _installed(dv)
    assert dv.refused(UTILITY, DV.DV_TICKET, DV.ticket_body(
        DEV, "inspect", "w", T0, T0 + 60)) == "not_permitted"
    assert dv.refused(ALICE, DV.DV_TICKET, DV.ticket_body(
        DEV, "inspect", "w", T0, T0 + 8 * DAY)) == "bad_fields"  # a window of 7 days at most
    assert dv.refused(ALICE, DV.DV_TICKET, DV.ticket_body(
        DEV, "inspect", "w", T0, T0 + 30)) == "ticket_expired"  # over before the chain's now
    assert dv.refused(ALICE, DV.DV_TICKET, DV.ticket_body(
        NOBODY, "inspect", "w", T0, T0 + 3600)) == "unknown_device"
    t = dv.ticket("switch_off", T0, T0 + 3600)
    assert dv.refused(ALICE, DV.DV_EXECUTE, DV.execute_body(t)) == "ticket_not_approved"
    assert dv.refused(REGULATOR, DV.DV_APPROVE, DV.approve_body(t)) == "not_permitted"
    assert dv.refused(UTILITY, DV.DV_APPROVE, DV.approve_body(b"\x00" * 32)) == \
        "ticket_unknown"
    dv.tx(UTILITY, DV.DV_APPROVE, DV.approve_body(t, note="ok"))
    assert dv.refused(UTILITY, DV.DV_APPROVE, DV.approve_body(t)) == "ticket_decided"
    assert dv.refused(BOB, DV.DV_EXECUTE, DV.execute_body(t)) == "not_ticket_holder"
    assert dv.refused(UTILITY, DV.DV_EXECUTE, DV.execute_body(t)) == "not_permitted"
    done = P.digest(dv.tx(ALICE, DV.DV_EXECUTE, DV.execute_body(t, DV.DONE, "opened")))
    assert dv.refused(ALICE, DV.DV_EXECUTE, DV.execute_body(t)) == "ticket_executed"
    rec = dict(dv.store.record(DVS.T_TICKET, t))
    assert (rec["state"], rec["approver"], rec["execution"], rec["result"]) == (
        DVS.EXECUTED, UTILITY.id, done, DV.DONE)
    # a rejected ticket is never executed; nor one before or after its window
    no = dv.ticket("isolate", T0, T0 + 3600)
    dv.tx(UTILITY, DV.DV_APPROVE, DV.approve_body(no, granted=False))
    assert dv.refused(ALICE, DV.DV_EXECUTE, DV.execute_body(no)) == "ticket_not_approved"
    later = dv.ticket("test", T0 + 7200, T0 + 10_800)
    dv.tx(UTILITY, DV.DV_APPROVE, DV.approve_body(later))
    assert dv.refused(ALICE, DV.DV_EXECUTE, DV.execute_body(later)) == "ticket_not_open"
    pending = dv.ticket("calibrate", T0, T0 + 3600)
    dv.at(T0 + 20_000)
    assert dv.refused(ALICE, DV.DV_EXECUTE, DV.execute_body(later)) == "ticket_expired"
    assert dv.refused(UTILITY, DV.DV_APPROVE, DV.approve_body(pending)) == "ticket_expired"
    kinds = [e["kind"] for e in dv.timeline()]
    assert kinds.count(DV.DV_TICKET) == 4 and kinds.count(DV.DV_APPROVE) == 3
    assert kinds.count(DV.DV_EXECUTE) == 1
    replay = verify_blocks(store_blocks(dv.store))
    check_derived(dv.store, replay)


def test_maintenance_under_a_ticket_and_alarms_for_unticketed_operations(
        dv: Devices) -> None:
    _installed(dv)
    t = dv.ticket("maintain", T0, T0 + 3600)
    body = DV.maintain_body(DEV, "cleaned the terminals", DV.OK, "", t)
    assert dv.refused(ALICE, DV.DV_MAINTAIN, body) == "ticket_not_approved"
    dv.tx(UTILITY, DV.DV_APPROVE, DV.approve_body(t))
    assert dv.refused(BOB, DV.DV_MAINTAIN, body) == "not_ticket_holder"
    assert dv.refused(ALICE, DV.DV_MAINTAIN, {**body, 1: DEV2}) == "unknown_device"
    assert dv.refused(ALICE, DV.DV_MAINTAIN, {**body, 3: "fine"}) == "bad_fields"
    dv.tx(ALICE, DV.DV_MAINTAIN, body)
    assert (dv.device()["maintained"], dv.device()["result"]) == (T0 + 60, DV.OK)
    # a switch_off seen inside an approved switch_off ticket's window is no alarm
    s = dv.ticket("switch_off", T0 + 600, T0 + 1200)
    dv.tx(UTILITY, DV.DV_APPROVE, DV.approve_body(s))
    assert dv.refused(UTILITY, DV.DV_ALARM, DV.alarm_body(DEV, "switch_off", T0 + 900)) \
        == "operation_ticketed"
    n = dv.device()["n"]  # a fog's is a no-op (the ticket may be newer than its look)
    dv.tx(dv.fog.key, DV.DV_ALARM, DV.alarm_body(DEV, "switch_off", T0 + 900))
    assert dv.device()["n"] == n
    assert dv.refused(ALICE, DV.DV_ALARM, DV.alarm_body(DEV, "switch_off", T0)) == \
        "not_permitted"
    assert dv.refused(UTILITY, DV.DV_ALARM, DV.alarm_body(
        DEV, "switch_off", T0, who=NOBODY)) == "unknown_participant"
    dv.tx(dv.fog.key, DV.DV_ALARM, DV.alarm_body(DEV, "switch_off", T0 + 1300, "relay open"))
    dv.tx(UTILITY, DV.DV_ALARM, DV.alarm_body(DEV, "isolate", T0 + 900, "seen", BOB.id))
    alarms = [e for e in dv.timeline() if e["kind"] == DV.DV_ALARM]
    assert [(e["by"], e["body"][2], e["body"].get(5)) for e in alarms] == [
        (dv.fog.key.id, "switch_off", None), (UTILITY.id, "isolate", BOB.id)]


def test_a_fault_is_determined_by_the_rule_for_each_cause(dv: Devices) -> None:
    _installed(dv)
    dv.tx(ALICE, DV.DV_MAINTAIN, DV.maintain_body(DEV, "inspection", DV.OK))
    maint = dv.timeline()[-1]["tx"]
    alarm = P.digest(dv.tx(dv.fog.key, DV.DV_ALARM, DV.alarm_body(DEV, "unknown", T0 + 100)))
    reg = dv.device()["tx"]
    cases = [  # (the fault's detected time, the rule's cause, the record that decides)
        (T0 + 200, DV.MISOPERATION, alarm),  # an alarm within a day before
        (T0 + 5 * DAY, DV.QUALITY, reg),  # maintained, young: the manufacturer's
        (T0 + 400 * DAY, DV.POOR_MAINTENANCE, maint),  # last maintained over a year before
    ]
    for t, cause, evidence in cases:
        fault = dv.fault(t)
        wrong = next(c for c in DV.CAUSES if c != cause)
        assert dv.refused(UTILITY, DV.DV_DETERMINE, DV.determine_body(DEV, fault, wrong)) == \
            "determination_mismatch"
        dv.tx(UTILITY, DV.DV_DETERMINE, DV.determine_body(DEV, fault, cause, "site visit"))
        rec = dict(dv.store.record(DVS.T_DETERMINATION, P.digest(fault) + DEV))
        assert (rec["cause"], rec["evidence"], rec["fault_t"]) == (cause, evidence, t), cause
        assert dv.refused(REGULATOR, DV.DV_DETERMINE, DV.determine_body(DEV, fault, cause)) \
            == "already_determined"
    last = dv.timeline()[-1]
    assert (last["kind"], last["body"][2], last["evidence"]) == (
        DV.DV_DETERMINE, P.digest(fault), maint)
    # an old transformer, maintained on time: ageing; then a defect left: poor maintenance
    dv.tx(BOB, DV.DV_REGISTER, DV.register_body(DEV2, TRANSFORMER))
    dv.tx(BOB, DV.DV_MAINTAIN, DV.maintain_body(DEV2, "oil test", DV.OK))
    fault = dv.fault(T0 + DAY)
    assert dv.refused(ALICE, DV.DV_DETERMINE, DV.determine_body(DEV2, fault, DV.AGEING)) == \
        "not_permitted"
    dv.tx(REGULATOR, DV.DV_DETERMINE, DV.determine_body(DEV2, fault, DV.AGEING))
    dv.tx(BOB, DV.DV_MAINTAIN, DV.maintain_body(DEV2, "bushing cracked", DV.DEFECT))
    defect = dv.timeline(DEV2)[-1]["tx"]
    fault2 = dv.fault(T0 + 2 * DAY)
    dv.tx(UTILITY, DV.DV_DETERMINE, DV.determine_body(DEV2, fault2, DV.POOR_MAINTENANCE))
    assert dv.timeline(DEV2)[-1]["evidence"] == defect
    # the same fault may concern several devices, each determined once
    dv.tx(UTILITY, DV.DV_DETERMINE, DV.determine_body(DEV, fault2, DV.QUALITY))
    replay = verify_blocks(store_blocks(dv.store))
    check_derived(dv.store, replay)


def test_a_determination_needs_a_fault_on_this_chain(dv: Devices) -> None:
    _installed(dv)
    fog = dv.fog.key
    p = dv.ledger.participant(fog.id)
    assert p is not None
    unsent = P.sign1(fog, C.tx(fog.id, p.nonce + 1, C.FAULT, C.fault_body("x", "", T0, ""),
                               T0, dv.operator.id))
    ticket = dv.tx(ALICE, DV.DV_TICKET, DV.ticket_body(DEV, "inspect", "w", T0, T0 + 600))
    for raw in (unsent, ticket, b"\x01\x02\x03"):
        assert dv.refused(UTILITY, DV.DV_DETERMINE, DV.determine_body(
            DEV, raw, DV.QUALITY)) == "unknown_fault"
    fault = dv.fault(T0)
    assert dv.refused(UTILITY, DV.DV_DETERMINE, DV.determine_body(
        NOBODY, fault, DV.QUALITY)) == "unknown_device"
    assert dv.refused(UTILITY, DV.DV_DETERMINE, DV.determine_body(
        DEV, fault, "bad luck")) == "bad_fields"


def test_the_rule_alone() -> None:
    """DV.determine's thresholds at their edges: the alarm window, the interval, warranty."""
    reg, m, a = b"r" * 32, b"m" * 32, b"a" * 32

    def cause(fault_t: int, maint: list[DV.Maintenance], alarms: list[DV.Alarm]) -> str:
        return DV.determine(fault_t, 0, 10 * DAY, 5 * DAY, reg, maint, alarms).cause

    assert cause(DV.ALARM_WINDOW_S + 7, [], [DV.Alarm(7, a)]) == DV.MISOPERATION
    assert cause(DV.ALARM_WINDOW_S + 8, [], [DV.Alarm(7, a)]) == DV.QUALITY
    assert cause(5, [], [DV.Alarm(7, a)]) == DV.QUALITY  # seen after the fault
    # an alarm entered long after the fault, however early its stated observation, does
    # not count (the utility cannot shift the blame once it knows of the fault)
    f = DV.ALARM_WINDOW_S + 7
    assert cause(f, [], [DV.Alarm(7, a, f + DV.ALARM_REPORT_S)]) == DV.MISOPERATION
    assert cause(f, [], [DV.Alarm(7, a, f + DV.ALARM_REPORT_S + 1)]) == DV.QUALITY
    assert cause(5 * DAY, [], []) == DV.QUALITY
    assert cause(5 * DAY + 1, [], []) == DV.POOR_MAINTENANCE
    assert cause(9 * DAY, [DV.Maintenance(4 * DAY, DV.OK, m)], []) == DV.QUALITY
    # a maintenance recorded after the fault does not count
    assert cause(6 * DAY, [DV.Maintenance(6 * DAY + 1, DV.OK, m)], []) == DV.POOR_MAINTENANCE
    assert cause(11 * DAY, [DV.Maintenance(10 * DAY, DV.OK, m)], []) == DV.AGEING
    assert DV.determine(DAY, 0, 10 * DAY, 5 * DAY, reg, [DV.Maintenance(1, DV.DEFECT, m)],
                        []) == DV.Evidence(DV.POOR_MAINTENANCE, m)


def test_the_browsers_verifier_knows_the_roles_in_the_same_order() -> None:
    """The audit page's verifier (meterledger/ui/src/verify/chain.js) checks a registration's
    role as the Python does: the same ROLES, `operator` last."""
    src = (Path(__file__).resolve().parents[2] / "meterledger" / "ui" / "src" / "verify" /
           "chain.js").read_text()
    m = re.search(r"const ROLES = \[([^\]]*)\]", src)
    assert m is not None
    assert tuple(re.findall(r"'([a-z]+)'", m.group(1))) == C.ROLES
    assert C.ROLES[-1] == "operator"
