"""The fog's device registry on a real SQLite file."""

from __future__ import annotations

import pytest

import fog_node.registry as reg_module
from fog_node.registry import ACTIVE, REVOKED, Registry, RegistryError

A, B = b"\xaa" * 8, b"\xbb" * 8
PUB_A, PUB_B = b"\x04" + b"\x01" * 64, b"\x04" + b"\x02" * 64


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "registry.db")
    yield r
    r.close()


def test_enroll_revoke_and_reopen(tmp_path):
    r = Registry(tmp_path / "r.db")
    r.set_status(A, PUB_A, ACTIVE, "provisioned", 100, decision_index=0)
    d0 = r.device(A)
    assert d0 is not None and d0.active
    r.set_status(A, PUB_A, REVOKED, "stolen", 200)
    r.close()
    r2 = Registry(tmp_path / "r.db")
    d = r2.device(A)
    assert d is not None and d.status == REVOKED and d.reason == "stolen" and not d.active
    assert r2.device(B) is None
    r2.close()


def test_a_meter_id_cannot_change_its_key(reg):
    reg.set_status(A, PUB_A, ACTIVE, "provisioned", 1)
    with pytest.raises(RegistryError, match="another public key"):
        reg.set_status(A, PUB_B, ACTIVE, "again", 2)
    with pytest.raises(RegistryError, match="status must be"):
        reg.set_status(B, PUB_B, "maybe", "", 2)


def test_readings_advance_last_seq_count_gaps_and_give_contiguous_seq(reg):
    reg.set_status(A, PUB_A, ACTIVE, "", 1)
    reg.record_readings([(A, 1, b"d1", 0, 900), (A, 2, b"d2", 1, 1800)], 2)
    assert reg.contiguous_seq(A) == 2
    reg.record_readings([(A, 5, b"d5", 2, 4500)], 3)  # 3 and 4 missing
    d = reg.device(A)
    assert d is not None and (d.last_seq, d.last_digest, d.gaps) == (5, b"d5", 2)
    assert reg.contiguous_seq(A) == 2
    reg.record_readings([(A, 3, b"d3", 3, 2700), (A, 4, b"d4", 4, 3600)], 5)
    assert reg.contiguous_seq(A) == 5
    d = reg.device(A)
    assert d is not None and d.last_seq == 5  # late fillers never move last_seq back
    assert reg.logged_digest(A, 4) == (b"d4", 4) and reg.logged_digest(A, 9) is None
    assert reg.indexed_upto() == 5


def test_quarantine_keeps_each_message_once_and_releases_per_meter(reg):
    assert reg.quarantine(A, b"m1", 10)[0] and reg.quarantine(A, b"m2", 11)[0]
    assert not reg.quarantine(A, b"m1", 12)[0]  # the same bytes again
    reg.quarantine(B, b"m3", 13)
    assert [r[1] for r in reg.quarantined()] == [b"m1", b"m2", b"m3"]
    assert list(reg.release(A)) == [b"m1", b"m2"]
    assert [r[1] for r in reg.quarantined()] == [b"m3"]


def test_evidence_and_alerts_are_kept(reg):
    assert reg.add_evidence(A, 3, b"logged", b"other", 50)
    assert not reg.add_evidence(A, 3, b"logged", b"other", 51)
    reg.alert(50, "equivocation", A, "seq 3 signed twice")
    assert reg.evidence() == [(A, 3, b"logged", b"other")]
    assert reg.alerts() == [(50, "equivocation", A, "seq 3 signed twice")]


def test_quarantine_evidence_and_alerts_are_bounded_oldest_dropped(tmp_path) -> None:
    # issue 13: strangers and one hostile meter cannot grow the registry without bound
    reg = Registry(tmp_path / "r.db")
    try:
        dropped = [reg.quarantine(A, b"a%d" % i, i, per_meter=3, total=5)[1] for i in range(5)]
        assert dropped == [0, 0, 0, 1, 1]
        assert [raw for _, raw, _ in reg.quarantined(A)] == [b"a2", b"a3", b"a4"]
        for i in range(4):
            reg.quarantine(B, b"b%d" % i, i, per_meter=3, total=5)
        assert reg.quarantine_size() == 5
        assert [raw for _, raw, _ in reg.quarantined(B)] == [b"b1", b"b2", b"b3"]
        for i in range(reg_module.EVIDENCE_PER_METER + 5):
            reg.add_evidence(A, i, b"l", b"c%d" % i, i)
        assert len(reg.evidence()) == reg_module.EVIDENCE_PER_METER
        assert reg.evidence()[0][1] == 5  # the oldest five went
    finally:
        reg.close()
