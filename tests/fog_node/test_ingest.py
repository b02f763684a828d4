"""Fog ingest on real SQLite files: every rejection reason counted, quarantine and
enrollment, replay and equivocation, the prev chain, gaps, batches, and acks that the
meter firmware itself accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fog_node.ingest import DUPLICATE, LOGGED, QUARANTINED, REJECTED, Ingest
from fog_node.log.store import SQLiteLogStore
from fog_node.registry import Registry
from meterledger import wire as P
from meterledger.wire import merkle
from tests import reference

T0 = 1_800_000_000
FOG = P.SigningKey.from_int(0xF06)
METER = P.SigningKey.from_int(reference.METER_D)  # the golden vectors' signer
OTHER = P.SigningKey.from_int(0xBEEF)


class Clock:
    def __init__(self) -> None:
        self.t = T0 + 86_400  # a day after the readings' intervals

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fog(tmp_path) -> Any:
    log = SQLiteLogStore(tmp_path / "log.db")
    reg = Registry(tmp_path / "registry.db")
    ing = Ingest(FOG, log, reg, Clock())
    yield ing
    log.close()
    reg.close()


def reading(key: P.SigningKey, seq: int, prev: bytes, t: int = T0, flags: int = 0, imp: int = 100) -> bytes:
    return P.sign1(key, P.reading(key.id, seq, t, 900, imp + seq, 0, flags, prev))


def chain(key: P.SigningKey, n: int, start: int = 1, prev: bytes = bytes(32)) -> list[bytes]:
    out = []
    for seq in range(start, start + n):
        m = reading(key, seq, prev, T0 + 900 * (seq - 1))
        out.append(m)
        prev = P.digest(m)
    return out


def enroll(fog: Ingest, key: P.SigningKey) -> None:
    fog.decide(key.public_key.raw, "active", "provisioned")


def statuses(outs: list[Any]) -> list[tuple[str, str]]:
    return [(o.status, o.reason) for o in outs]


def ack_seq(ack: bytes) -> int:
    seq: int = P.verify(ack, FOG.public_key).fields[2]
    return seq


def test_enrolled_meter_readings_are_logged_and_acked(fog):
    enroll(fog, METER)
    msgs = chain(METER, 3)
    outs, acks = fog.process(msgs)
    assert statuses(outs) == [(LOGGED, "")] * 3
    assert [ack_seq(a) for _, a in acks] == [3]
    assert fog.log.size() == 4  # the enrollment decision, then the readings
    assert [fog.log.entry(i) for i in (1, 2, 3)] == msgs  # exact bytes
    root = fog.log.root()
    proof = fog.log.inclusion_proof(2, 4)
    merkle.verify_inclusion(merkle.leaf_hash(msgs[1]), 2, 4, proof.path, root)


def test_the_firmware_accepts_the_fogs_ack():
    # the meter's own check: fog signature, its id, and the digest of its stored reading
    import os
    import tempfile

    from core import keys as fw_keys
    from core.fs import MemFS
    from core.meter import Meter
    from core.sources import Synthetic
    with tempfile.TemporaryDirectory() as d:
        log, reg = SQLiteLogStore(f"{d}/l.db"), Registry(f"{d}/r.db")
        fog = Ingest(FOG, log, reg, Clock())
        meter = Meter(MemFS(), Synthetic(seed=1), os.urandom, FOG.id, FOG.public_key.raw)
        meter.boot(T0 - 5, True)
        msgs = [m for now in range(T0 - 5, T0 + 1801, 5) if (m := meter.tick(now, now))]
        fog.decide(meter.key.pub, "active", "test")
        _, acks = fog.process(msgs)
        assert meter.handle_ack(acks[0][1]) == len(msgs) == 3
        assert len(meter.spool) == 0
        assert fw_keys.party_id(meter.key.pub) == acks[0][0]
        log.close()
        reg.close()


def test_unknown_meter_is_quarantined_then_processed_on_enrollment(fog):
    msgs = chain(METER, 2)
    outs, acks = fog.process(msgs)
    assert statuses(outs) == [(QUARANTINED, "unknown_meter")] * 2 and acks == []
    assert fog.log.size() == 0 and len(fog.registry.quarantined()) == 2
    decision, outs, acks = fog.decide(METER.public_key.raw, "active", "provisioned")
    assert P.verify(decision, FOG.public_key).fields[18] == "active"
    assert statuses(outs) == [(LOGGED, "")] * 2 and [ack_seq(a) for _, a in acks] == [2]
    assert fog.registry.quarantined() == []


def test_revoked_meter_is_rejected_and_counted(fog):
    enroll(fog, METER)
    fog.decide(METER.public_key.raw, "revoked", "tampered")
    outs, acks = fog.process(chain(METER, 1))
    assert statuses(outs) == [(REJECTED, "revoked")] and acks == []
    assert fog.rejected["revoked"] == 1


GOLDEN = json.loads(reference.VECTORS.read_text())


@pytest.mark.parametrize("case", GOLDEN["broken"], ids=lambda c: c["name"])
def test_every_must_reject_rule_is_rejected_counted_and_the_node_goes_on(fog, case):
    enroll(fog, METER)
    outs, acks = fog.process([bytes.fromhex(case["message"])])
    assert len(outs) == 1 and outs[0].status == REJECTED
    want = case["reason"]
    assert outs[0].reason == want, outs[0]
    assert fog.rejected[want] == 1 and acks == []
    outs, _ = fog.process(chain(METER, 1))  # and the node keeps serving
    assert statuses(outs) == [(LOGGED, "")]


def test_duplicate_is_reacked_not_logged_twice(fog):
    enroll(fog, METER)
    msgs = chain(METER, 2)
    fog.process(msgs)
    outs, acks = fog.process([msgs[1]])
    assert statuses(outs) == [(DUPLICATE, "")] and [ack_seq(a) for _, a in acks] == [2]
    assert fog.log.size() == 3 and fog.counters["duplicates"] == 1


def test_equivocation_is_kept_as_evidence_and_alerted(fog):
    enroll(fog, METER)
    msgs = chain(METER, 2)
    fog.process(msgs)
    twin = reading(METER, 2, P.digest(msgs[0]), T0 + 900, imp=999)
    outs, _ = fog.process([twin])
    assert statuses(outs) == [(REJECTED, "equivocation")]
    assert fog.registry.evidence() == [(METER.id, 2, P.digest(msgs[1]), twin)]
    assert [a[1] for a in fog.registry.alerts()] == ["equivocation"]
    assert fog.log.size() == 3


def test_prev_must_link_to_the_logged_previous_reading_both_ways(fog):
    enroll(fog, METER)
    msgs = chain(METER, 3)
    fog.process([msgs[0], msgs[2]])  # 2 is missing: both 1 and 3 are logged, gap tracked
    bad = reading(METER, 2, b"\x07" * 32, T0 + 900)  # does not link to 1
    outs, _ = fog.process([bad])
    assert statuses(outs) == [(REJECTED, "prev_mismatch")]
    bad2 = reading(METER, 2, P.digest(msgs[0]), T0 + 900, imp=5)  # links to 1, but 3 doesn't link to it
    outs, _ = fog.process([bad2])
    assert statuses(outs) == [(REJECTED, "prev_mismatch")]
    outs, acks = fog.process([msgs[1]])
    assert statuses(outs) == [(LOGGED, "")] and [ack_seq(a) for _, a in acks] == [3]


def test_gaps_hold_the_ack_and_are_counted(fog):
    enroll(fog, METER)
    msgs = chain(METER, 4)
    _, acks = fog.process([msgs[0], msgs[2], msgs[3]])
    assert [ack_seq(a) for _, a in acks] == [1]
    d = fog.registry.device(METER.id)
    assert d is not None and d.gaps == 1 and d.last_seq == 4


def test_reading_from_the_future_is_rejected_unless_the_clock_is_unsynced(fog):
    enroll(fog, METER)
    later = T0 + 86_400 + 3600  # an hour ahead of the fog's clock, on the grid
    outs, _ = fog.process([reading(METER, 1, bytes(32), later)])
    assert statuses(outs) == [(REJECTED, "future_t")]
    outs, _ = fog.process([reading(METER, 1, bytes(32), later + 1, flags=P.CLOCK_UNSYNCED)])
    assert statuses(outs) == [(LOGGED, "")]


def test_bad_signature_from_an_enrolled_meter(fog):
    enroll(fog, METER)
    m = P.parse(chain(METER, 1)[0])
    forged = m.raw[:-64] + OTHER.sign(m.tbs)
    outs, _ = fog.process([forged])
    assert statuses(outs) == [(REJECTED, "bad_signature")]


def test_batches_are_split_and_bad_batches_rejected(fog):
    enroll(fog, METER)
    msgs = chain(METER, 3)
    outs, acks = fog.process([bytes([0x83]) + b"".join(msgs)])
    assert statuses(outs) == [(LOGGED, "")] * 3 and [ack_seq(a) for _, a in acks] == [3]
    outs, _ = fog.process([bytes([0x82]) + b"".join(msgs)])  # says 2, carries 3
    assert statuses(outs) == [(REJECTED, "trailing_bytes")]
    outs, _ = fog.process([b"\x80"])
    assert statuses(outs) == [(REJECTED, "bad_batch")]
    outs, _ = fog.process([bytes([0x82]) + msgs[0] + b"\x01"])
    assert statuses(outs) == [(REJECTED, "bad_tag")]


def test_only_meter_message_types_are_taken(fog):
    enroll(fog, METER)
    ack = P.sign1(FOG, P.ack(METER.id, 1, bytes(32), T0, FOG.id))
    outs, _ = fog.process([ack])
    assert statuses(outs) == [(REJECTED, "wrong_type")]


def test_births_are_logged_once_and_unknown_births_listed(fog):
    birth = P.sign1(METER, {0: 2, 1: METER.id, 10: METER.public_key.raw, 11: "0.1.0", 12: 1,
                            13: 0, 14: "esp32", 15: "sim", 4: 900, 16: FOG.id})
    outs, _ = fog.process([birth])
    assert statuses(outs) == [(QUARANTINED, "unknown_meter")]
    assert fog.pending_births == {METER.id: METER.public_key.raw}
    enroll(fog, METER)
    assert statuses(fog.process([birth])[0]) == [(LOGGED, "")]
    assert statuses(fog.process([birth])[0]) == [(DUPLICATE, "")]
    other_fog = P.sign1(METER, {0: 2, 1: METER.id, 10: METER.public_key.raw, 11: "0.1.0", 12: 2,
                                13: 0, 14: "esp32", 15: "sim", 4: 900, 16: b"\x09" * 8})
    assert statuses(fog.process([other_fog])[0]) == [(REJECTED, "wrong_fog")]


def test_restart_reindexes_what_the_registry_missed(tmp_path):
    log, reg = SQLiteLogStore(tmp_path / "l.db"), Registry(tmp_path / "r.db")
    fog = Ingest(FOG, log, reg, Clock())
    enroll(fog, METER)
    msgs = chain(METER, 3)
    fog.process(msgs[:1])
    log.append_batch(msgs[1:])  # committed to the log, then "power lost" before the registry
    log.close()
    reg.close()
    log, reg = SQLiteLogStore(tmp_path / "l.db"), Registry(tmp_path / "r.db")
    fog = Ingest(FOG, log, reg, Clock())
    assert fog.recover() == 2
    outs, acks = fog.process([msgs[2]])
    assert statuses(outs) == [(DUPLICATE, "")] and [ack_seq(a) for _, a in acks] == [3]
    log.close()
    reg.close()


def test_a_message_on_another_meters_topic_is_rejected(fog):
    enroll(fog, METER)
    enroll(fog, OTHER)
    outs, _ = fog.process(chain(METER, 1), [OTHER.id])
    assert statuses(outs) == [(REJECTED, "topic_mismatch")]
    outs, _ = fog.process(chain(METER, 1), [METER.id])
    assert statuses(outs) == [(LOGGED, "")]
