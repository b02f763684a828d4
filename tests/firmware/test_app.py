"""The firmware app on the host board: the main loop, a transport, commands and actuators.

The fog node arrives with the MQTT issue; here a recording transport plays the network
and the fog's signing key answers, so the app's own logic (backlog, resend, acks,
commands, persistence of actuator state) is what is tested.
"""

from __future__ import annotations

from typing import Any

import pytest

from app import App
from core import cose, keys
from core import messages as M
from hal.host import HostReboot
from tests.kit.appkit import drive, make_app
from tests.kit.meterkit import FOG, T0, Clock, RecordingTransport


def seqs(batch: list[bytes]) -> list[int]:
    return [cose.parse(m).fields[2] for m in batch]


def fog_ack(app: App, seq: int) -> bytes:
    stored = app.meter.spool.get(seq)
    return cose.sign1(FOG, M.ack(app.meter.id, seq, cose.digest(stored), T0, FOG.id))


def fog_cmd(app: App, cid: int, op: str, args: dict[int, Any]) -> bytes:
    return cose.sign1(FOG, M.command(app.meter.id, cid, op, args, T0 + 10**6, b"", FOG.id))


def test_birth_on_connect_then_readings_flow_and_drain_on_acks(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr)
    birth = cose.verify(tr.births[0], keys.VerifyingKey(app.meter.key.pub)).fields
    assert birth[0] == M.BIRTH and birth[16] == FOG.id and birth[15] == "sim"
    tr.up = False  # offline for three intervals: readings wait in the spool
    drive(app, clock, 3 * 900)
    assert tr.sent == [] and len(app.meter.spool) == 3
    tr.up = True
    drive(app, clock, 5)
    assert seqs(tr.sent[-1]) == [1, 2, 3]  # backlog as one batch in seq order
    tr.inbox.append(("ack", fog_ack(app, 2)))
    drive(app, clock, 5)
    assert len(app.meter.spool) == 1
    drive(app, clock, 65)  # reading 4 goes out; no ack for 3 within 60 s: 3 and 4 again
    assert [seqs(b) for b in tr.sent[-2:]] == [[4], [3, 4]]
    tr.inbox.append(("ack", fog_ack(app, 4)))
    drive(app, clock, 5)
    assert len(app.meter.spool) == 0


def test_relay_command_switches_and_survives_reboot(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr)
    assert app.board.relay() is True
    tr.inbox.append(("cmd", fog_cmd(app, 1, "relay", {1: False})))
    drive(app, clock, 5)
    res = cose.verify(tr.results[-1], keys.VerifyingKey(app.meter.key.pub)).fields
    assert (res[2], res[3], res[4]) == (1, M.RESULT_DONE, "relay off")
    assert app.board.relay() is False
    drive(app, clock, 1800)
    r = [cose.parse(m).fields for b in tr.sent for m in b][-1]
    assert r[3] == T0 + 900
    assert r[9][3] == 0  # the household is off: no import power in a whole interval
    again = make_app(tmp_path, clock, RecordingTransport())
    assert again.board.relay() is False  # the commanded state is restored, not the default


def test_forged_command_moves_no_relay(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr)
    forger = keys.SigningKey(31337)
    fake = cose.parse(fog_cmd(app, 1, "relay", {1: False}))
    forged = cose.cbor.encode(cose.cbor.Tag(18, [cose.PROTECTED, {4: FOG.id}, fake.payload,
                                                 forger.sign_digest(fake.tbs_digest())]))
    tr.inbox.append(("cmd", forged))
    drive(app, clock, 5)
    res = cose.verify(tr.results[-1], keys.VerifyingKey(app.meter.key.pub)).fields
    assert res[3] == M.RESULT_REJECTED and res[4].startswith("bad_signature")
    assert app.board.relay() is True


def test_reboot_command_is_a_clean_reboot(tmp_path):
    clock, tr = Clock(T0 - 30), RecordingTransport()
    app = make_app(tmp_path, clock, tr)
    drive(app, clock, 900)
    tr.inbox.append(("cmd", fog_cmd(app, 1, "reboot", {})))
    with pytest.raises(HostReboot):
        drive(app, clock, 5)
    res = cose.verify(tr.results[-1], keys.VerifyingKey(app.meter.key.pub)).fields
    assert res[3] == M.RESULT_DONE  # the result left before the reset
    tr2 = RecordingTransport()
    app2 = make_app(tmp_path, clock, tr2)
    drive(app2, clock, 900)
    f = cose.parse(tr2.sent[-1][-1]).fields
    assert f[2] == 2 and not f[7] & M.POWER_FAIL and f[7] & M.PARTIAL


def test_time_command_syncs_an_unsynced_meter(tmp_path):
    clock, tr = Clock(50_000), RecordingTransport()
    app = make_app(tmp_path, clock, tr, synced=False)
    tr.inbox.append(("cmd", fog_cmd(app, 1, "time", {1: T0 + 100})))
    drive(app, clock, 5)
    assert app.board.clock_synced() and abs(app.board.now() - (T0 + 100)) < 10
    drive(app, clock, 900)
    f = cose.parse(tr.sent[-1][-1]).fields
    assert f[3] == T0 + 900 and f[7] & M.CLOCK_STEPPED and not f[7] & M.CLOCK_UNSYNCED


def test_s0_pulse_source_counts_energy_across_reboots(tmp_path):
    clock = Clock(T0 - 30)
    app = make_app(tmp_path, clock, None, source="pulse", s0_imp_per_kwh=1000)
    app.board.inject_pulses(250)
    drive(app, clock, 900)
    app.board.inject_pulses(500)
    drive(app, clock, 900)
    rs = [cose.parse(app.meter.spool.get(s)).fields for s in (1, 2)]
    assert rs[0][5] == 250 and rs[1][5] == 750
    app2 = make_app(tmp_path, clock, None, source="pulse", s0_imp_per_kwh=1000)
    app2.board.inject_pulses(100)  # the counter restarts at 0 after a reboot
    drive(app2, clock, 900)
    f = cose.parse(app2.meter.spool.get(3)).fields
    assert f[5] == 850 and f[7] & M.POWER_FAIL and not f[7] & M.REGISTER_RESET
