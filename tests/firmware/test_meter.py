"""The interval engine and the meter: flags, persistence across reboots, acks, commands."""

from __future__ import annotations

from typing import Any

from core import cose, keys
from core import messages as M
from core.fs import MemFS
from tests.kit.meterkit import FOG, T0, ScriptedSource, ack, command, new_meter, run


def test_readings_close_on_the_grid_and_chain_through_prev():
    m = new_meter()
    m.boot(T0 - 100, True)
    rs = run(m, T0 - 100, T0 + 3 * 900 + 1)
    assert [r[2] for r in rs] == [1, 2, 3, 4]
    assert [r[3] for r in rs] == [T0, T0 + 900, T0 + 1800, T0 + 2700]
    assert rs[0][7] == M.PARTIAL  # booted inside the first interval
    assert [r[7] for r in rs[1:]] == [0, 0, 0]
    assert rs[0][8] == bytes(32)
    for i in range(1, 4):  # prev is the digest of the previous message
        assert rs[i][8] == cose.digest(m.spool.get(i))
    assert rs[1][5] - rs[0][5] == 900  # 1 Wh/s for one interval
    assert rs[1][9] == {1: 2300, 2: 2300, 3: 800, 4: 0, 5: 210}


def test_seq_and_prev_survive_reboot_and_power_fail_is_flagged():
    fs = MemFS()
    src = ScriptedSource()
    m = new_meter(fs, src)
    m.boot(T0 - 10, True)
    rs = run(m, T0 - 10, T0 + 901)
    last_digest = cose.digest(m.spool.get(2))
    # supply lost at T0+1000, back at T0+2000: one whole interval has no reading
    m2 = new_meter(fs, src)
    m2.boot(T0 + 2000, True, "power")
    rs2 = run(m2, T0 + 2000, T0 + 2701)
    assert rs2[0][2] == 3 and rs2[0][8] == last_digest
    assert rs2[0][3] == T0 + 2700
    assert rs2[0][7] == M.POWER_FAIL | M.PARTIAL | M.SKIPPED
    assert rs2[0][5] > rs[-1][5]  # the registers carry the energy of the gap


def test_deliberate_reboot_is_not_a_power_failure():
    fs = MemFS()
    m = new_meter(fs)
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + 1)
    m.prepare_reboot()
    m2 = new_meter(fs)
    m2.boot(T0 + 100, True, "power")
    rs = run(m2, T0 + 100, T0 + 901)
    assert rs[0][7] == M.PARTIAL
    m3 = new_meter(fs)
    m3.boot(T0 + 1000, True, "wdt")  # a watchdog reset is not a supply loss either
    assert run(m3, T0 + 1000, T0 + 1801)[0][7] == M.PARTIAL


def test_boot_count_increments_and_birth_reports_it():
    fs = MemFS()
    for expected in (1, 2, 3):
        m = new_meter(fs)
        assert m.boot(T0, True) == expected
    b = cose.verify(m.birth(), keys.VerifyingKey(m.key.pub)).fields
    M.check_fields(b)
    assert b[12] == 3 and b[16] == FOG.id and b[10] == m.key.pub


def test_unsynced_clock_closes_by_uptime_and_flags_it():
    m = new_meter()
    m.boot(123_456, False)  # an RTC that never saw NTP
    rs = run(m, 123_456, 123_456 + 1801)
    assert len(rs) == 2
    for r in rs:
        assert r[7] & M.CLOCK_UNSYNCED
    assert rs[0][3] == 123_456 + 900 and rs[1][3] == 123_456 + 1800


def test_clock_step_sets_clock_stepped_and_partial_small_slew_does_not():
    m = new_meter()
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + 1)
    m.clock_set(T0 + 100, T0 + 101)  # 1 s slew
    assert run(m, T0 + 101, T0 + 901)[0][7] == 0
    m.clock_set(T0 + 1000, T0 + 1300)  # 300 s step
    r = run(m, T0 + 1300, T0 + 1801)[0]
    assert r[7] == M.CLOCK_STEPPED | M.PARTIAL


def test_a_clock_a_day_ahead_set_right_resumes_at_once():
    # issue 13: a day's forward jump, then the fog's "time" command sets it right: the next
    # reading comes at the next boundary of the right time, not a day later
    m = new_meter()
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + 1)
    ahead = run(m, T0 + 86_400, T0 + 86_400 + 1)
    assert [r[3] for r in ahead] == [T0 + 86_400]
    m.clock_set(T0 + 86_410, T0 + 20)
    back = run(m, T0 + 20, T0 + 1801)
    assert [r[3] for r in back] == [T0 + 900, T0 + 1800]
    assert back[0][7] == M.CLOCK_STEPPED | M.PARTIAL and back[1][7] == 0
    assert [r[2] for r in back] == [3, 4]  # seq goes on; prev chains across the step


def test_a_silent_step_back_is_found_on_the_next_pass():
    # a clock that goes back with no one calling clock_set (an RTC, a host clock)
    m = new_meter()
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + 86_401)
    rs = run(m, T0 + 5, T0 + 915)
    assert [r[3] for r in rs] == [T0 + 900]
    assert rs[0][7] & M.CLOCK_STEPPED


def test_a_forward_step_closes_at_the_next_boundary_of_the_new_time():
    m = new_meter()
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + 1)
    m.clock_set(T0 + 100, T0 + 86_400 + 100)
    r = run(m, T0 + 86_400 + 100, T0 + 86_400 + 901)
    assert [x[3] for x in r] == [T0 + 86_400 + 900]
    assert r[0][7] == M.CLOCK_STEPPED | M.PARTIAL | M.SKIPPED


def test_first_ntp_sync_snaps_to_the_grid():
    m = new_meter()
    m.boot(5_000, False)
    m.clock_set(5_100, T0 + 50)
    r = run(m, T0 + 50, T0 + 901)[0]
    assert r[3] == T0 + 900
    assert r[7] == M.CLOCK_STEPPED | M.PARTIAL


def test_register_going_backwards_is_flagged():
    src = ScriptedSource()
    m = new_meter(source=src)
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + 1)
    src.imp = 10  # meter replaced
    r = run(m, T0 + 1, T0 + 901)[0]
    assert r[7] & M.REGISTER_RESET and r[5] < 1000


def test_source_error_keeps_last_good_registers():
    src = ScriptedSource()
    m = new_meter(source=src)
    m.boot(T0 - 10, True)
    good = run(m, T0 - 10, T0 + 1)[0]
    src.fail = True
    r = run(m, T0 + 1, T0 + 901)[0]
    assert r[7] & M.SOURCE_ERROR
    assert (r[5], r[6]) == (good[5], good[6])


def test_tamper_is_flagged():
    src = ScriptedSource()
    m = new_meter(source=src)
    m.boot(T0 - 10, True)
    src.tamper = True
    assert run(m, T0 - 10, T0 + 1)[0][7] & M.TAMPER


def test_full_spool_consumes_no_seq_and_next_reading_is_skipped():
    m = new_meter(spool_capacity=3)
    m.boot(T0 - 10, True)
    m.engine.flags |= M.POWER_FAIL  # an event inside an interval that will be lost
    rs = run(m, T0 - 10, T0 + 6 * 900 + 1)
    assert [r[2] for r in rs] == [1, 2, 3]
    assert m.stats["spool_full"] == 4
    assert m.handle_ack(ack(m, 3)) == 3
    r = run(m, T0 + 6 * 900, T0 + 7 * 900)[0]
    assert r[2] == 4  # no seq was consumed while full
    assert r[7] & M.SKIPPED
    assert r[5] - rs[-1][5] == 5 * 900  # the registers cover every skipped interval


def test_sticky_flags_of_a_lost_interval_travel_with_the_next_reading():
    src = ScriptedSource()
    m = new_meter(source=src, spool_capacity=1)
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + 1)
    src.tamper = True
    run(m, T0 + 1, T0 + 901)  # spool full: lost
    src.tamper = False
    m.handle_ack(ack(m, 1))
    r = run(m, T0 + 901, T0 + 1801)[0]
    assert r[7] & M.TAMPER and r[7] & M.SKIPPED


# --- acks -----------------------------------------------------------------------------
def _meter_with_readings(n: int = 3, **kw):
    m = new_meter(**kw)
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + (n - 1) * 900 + 1)
    assert len(m.spool) == n
    return m


def test_valid_ack_drops_through_its_seq():
    m = _meter_with_readings()
    a2 = ack(m, 2)
    assert m.handle_ack(a2) == 2
    assert [s for s, _ in m.pending()] == [3]
    assert m.handle_ack(a2) == 0  # a repeated ack is harmless
    assert m.stats["ack_rejected"] == 0


def test_ack_with_wrong_digest_is_ignored_and_counted():
    m = _meter_with_readings()
    assert m.handle_ack(ack(m, 2, digest=b"\x00" * 32)) == 0
    assert len(m.spool) == 3 and m.stats["ack_rejected:digest_mismatch"] == 1


def test_forged_ack_is_ignored_and_counted():
    m = _meter_with_readings()
    forger = keys.SigningKey(777)
    msg = ack(m, 3, signer=forger)
    assert m.handle_ack(msg) == 0 and m.stats["ack_rejected:wrong_fog"] == 1
    # a forger that claims the fog's id fails the signature
    f = cose.parse(msg).fields
    f[17] = FOG.id
    forged = cose.cbor.encode(cose.cbor.Tag(18, [cose.PROTECTED, {4: FOG.id}, cose.cbor.encode(f),
                                                 forger.sign_digest(b"\x00" * 32)]))
    assert m.handle_ack(forged) == 0 and m.stats["ack_rejected:bad_signature"] == 1
    assert len(m.spool) == 3


def test_ack_for_another_meter_or_unknown_seq_is_ignored():
    m = _meter_with_readings()
    assert m.handle_ack(ack(m, 2, dev=b"\x01" * 8, digest=b"\x02" * 32)) == 0
    assert m.handle_ack(ack(m, 9, digest=b"\x02" * 32)) == 0
    assert m.stats["ack_rejected:wrong_dev"] == 1 and m.stats["ack_rejected:unknown_seq"] == 1
    assert m.handle_ack(b"\xd2garbage") == 0
    assert len(m.spool) == 3


def test_without_fog_key_no_ack_drops_anything():
    # issue 13: a forged ack (right digest, any signer) must never cost a reading
    m = _meter_with_readings(fog_pub=False)
    forger = keys.SigningKey(4242)
    assert m.handle_ack(ack(m, 3)) == 0
    assert m.handle_ack(ack(m, 3, signer=forger)) == 0
    assert len(m.spool) == 3
    assert m.stats["ack_rejected:no_fog_key"] == 2


def _forged_ack(m, seq):
    """An ack that names the real fog (kid and field 17) and the right digest, signed by
    someone else: what a stranger on the broker could publish."""
    from meterledger import wire as P

    class Forger:
        id = FOG.id
        sign = P.SigningKey.from_int(4242).sign

    forged: Any = Forger()  # duck-typed: the real fog's id, another key's signature
    return P.sign1_encoded(forged, P.encode(M.ack(m.id, seq, cose.digest(m.spool.get(seq)),
                                                  T0, FOG.id)))


def test_a_forged_ack_is_ignored_by_a_provisioned_meter():
    m = _meter_with_readings()
    assert m.handle_ack(_forged_ack(m, 3)) == 0
    assert len(m.spool) == 3 and m.stats["ack_rejected:bad_signature"] == 1
    assert m.handle_ack(ack(m, 3)) == 3


# --- commands ---------------------------------------------------------------------------
def _result(m, msg):
    f = cose.verify(msg, keys.VerifyingKey(m.key.pub)).fields
    M.check_fields(f)
    return f


def test_valid_command_is_accepted_once():
    m = _meter_with_readings(1)
    res, f = m.accept_command(command(m, 5, "relay", {1: False}), T0)
    assert res is None and f[3] == "relay"
    done = _result(m, m.finish_command(f, T0, True, "relay off"))
    assert (done[2], done[3], done[4]) == (5, M.RESULT_DONE, "relay off")
    res, f = m.accept_command(command(m, 5, "relay", {1: False}), T0)
    r = _result(m, res)
    assert f is None and r[3] == M.RESULT_REJECTED and "replay" in r[4]


def _rejected(m, msg, now=T0, synced=True):
    res, f = m.accept_command(msg, now, synced)
    assert f is None, "the meter must not act"
    r = _result(m, res)
    assert r[3] == M.RESULT_REJECTED
    # the rejection echoes the command's cid whenever one can be read, so the fog can match it
    try:
        want = cose.cbor.decode(cose.cbor.decode(msg, (18,)).value[2])[2]
    except Exception:
        want = 0
    assert r[2] == want
    return r[4]


def test_bad_commands_are_rejected_with_reason_and_not_acted_on():
    m = _meter_with_readings(1)
    m.accept_command(command(m, 10, "ping", {}), T0)
    forger = keys.SigningKey(4242)
    assert _rejected(m, command(m, 11, "relay", {1: True}, signer=forger)).startswith("wrong_fog")
    assert _rejected(m, command(m, 9, "relay", {1: True})).startswith("stale_cid")
    assert _rejected(m, command(m, 11, "relay", {1: True}, not_after=T0 - 1)).startswith("expired")
    assert _rejected(m, command(m, 11, "dance", {})).startswith("bad_fields: unknown op")
    assert _rejected(m, command(m, 11, "interval", {1: 901})).startswith("bad_fields")
    assert _rejected(m, command(m, 11, "relay", {1: 1})).startswith("bad_fields")
    assert _rejected(m, command(m, 11, "ping", {}, dev=b"\x07" * 8)).startswith("wrong_dev")
    assert _rejected(m, b"\x00garbage").startswith("trailing_bytes")
    assert m.st["cid"] == 10  # nothing above advanced the command counter
    assert m.stats["commands_rejected"] == 8


def test_command_without_fog_key_is_rejected():
    m = _meter_with_readings(1, fog_pub=False)
    assert _rejected(m, command(m, 1, "ping", {})).startswith("no_fog_key")


def test_time_command_may_fix_an_unsynced_clock_despite_not_after():
    m = _meter_with_readings(1)
    _res, f = m.accept_command(command(m, 3, "time", {1: T0}, not_after=T0), 5, synced=False)
    assert f is not None
    assert _rejected(m, command(m, 4, "relay", {1: True}, not_after=T0), now=5 + T0, synced=False).startswith("expired")


def test_interval_command_changes_dur_persistently():
    fs = MemFS()
    m = new_meter(fs)
    m.boot(T0 - 10, True)
    run(m, T0 - 10, T0 + 1)
    _, f = m.accept_command(command(m, 1, "interval", {1: 300}), T0 + 1)
    m.finish_command(f, T0 + 1)
    rs = run(m, T0 + 1, T0 + 601)
    assert [(r[3], r[4]) for r in rs] == [(T0 + 300, 300), (T0 + 600, 300)]
    m2 = new_meter(fs)
    m2.boot(T0 + 700, True)
    assert m2.dur == 300
