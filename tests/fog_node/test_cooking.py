"""Cooked data on a real fog node (fog_node.cooking.cooker, fog_node.cooking.feeders): VEE on logged
readings, type-10 estimates and supersessions in the log, type-11 aggregates per feeder at
interval close with revisions for late data, privacy merging, feeder loss and local faults.
Real SQLite stores in a temporary data dir; meters are signing keys making SPEC readings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fog_node.config import FogConfig
from fog_node.cooking import vee as V
from fog_node.cooking.feeders import Feeder, FeederConfigError, members_digest, parse_feeders
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P

T0 = 1_800_000_000  # a multiple of 900
IVL = 900


class Meter:
    """A meter as the fog sees it: signed readings with seq, prev and registers."""

    def __init__(self, n: int) -> None:
        self.key = P.SigningKey.from_int(0xA0000 + n)
        self.dev = self.key.id
        self.seq = 0
        self.prev = P.ZERO32
        self.imp = 10_000 * n
        self.exp = 0
        self.msgs: dict[int, bytes] = {}

    def reading(self, t: int, imp_wh: int = 100, exp_wh: int = 0, flags: int = 0,
                q: dict[int, int] | None = None, imp: int | None = None) -> bytes:
        self.seq += 1
        self.imp = imp if imp is not None else self.imp + imp_wh
        self.exp += exp_wh
        f = P.reading(self.dev, self.seq, t, IVL, self.imp, self.exp, flags, self.prev)
        if q:
            f[9] = q
        raw = P.sign1(self.key, f)
        self.prev = P.digest(raw)
        self.msgs[self.seq] = raw
        return raw


class Fog:
    def __init__(self, tmp: Path, n: int, **config: Any) -> None:
        init_data_dir(tmp / "fog")
        self.now = T0
        self.node = FogNode(FogConfig(data_dir=tmp / "fog", skew_s=10**7, **config),
                            lambda: self.now)
        self.meters = [Meter(i) for i in range(n)]
        for m in self.meters:
            self.node.ingest.decide(m.key.public_key.raw, "active", "test")

    def send(self, *raws: bytes) -> None:
        outcomes, _ = self.node.ingest.process(list(raws))
        assert all(o.status == "logged" for o in outcomes), outcomes

    def all_read(self, t: int, imp_wh: int = 100, skip: tuple[int, ...] = (), **kw: Any) -> None:
        self.send(*[m.reading(t, imp_wh, **kw) for i, m in enumerate(self.meters)
                    if i not in skip])

    def close(self, ivl: int) -> Any:
        self.now = ivl + 60
        return self.node.cooker.close(ivl, self.now)

    def tick(self) -> list[bytes]:
        self.now += 5
        return self.node.cooker.tick(self.now)

    def entries(self, type_: int) -> list[P.Message]:
        log = self.node.log
        out = []
        for i in range(log.size()):
            m = P.parse(log.entry(i))
            if m.type == type_:
                P.verify_message(m, self.node.key.public_key)
                out.append(m)
        return out

    def aggregates(self, feeder: str | None = None) -> list[P.Fields]:
        return [m.fields for m in self.entries(P.AGGREGATE)
                if feeder is None or m.fields[1] == feeder]

    def trail(self) -> list[str]:
        log = self.node.log
        items = [(P.digest(log.entry(i)), P.parse(log.entry(i), schema=False).fields)
                 for i in range(log.size())]
        return V.audit_trail(items)


@pytest.fixture
def fog(tmp_path: Path) -> Fog:
    f = Fog(tmp_path, 6)
    f.all_read(T0)
    return f


def test_a_full_interval_is_measured_and_chained_into_the_checkpoint(fog: Fog):
    fog.all_read(T0 + IVL, imp_wh=250, q={1: 2290, 2: 2350})
    closed = fog.close(T0 + IVL)
    [agg] = fog.aggregates()
    assert agg[1] == "all" and agg[2] == T0 + IVL and agg[3] == IVL
    assert (agg[4], agg[5], agg[6], agg[7], agg[8], agg[9]) == (6 * 250, 0, 6, 6, 0, 0)
    assert (agg[11], agg[12], agg[13], agg[16]) == (2290, 2350, [], 0)
    assert agg[15] == P.ZERO32 and 18 not in agg
    assert agg[19] == members_digest(m.dev for m in fog.meters)
    assert closed.agg == P.digest(closed.aggregates[-1])
    cp = fog.node.checkpoints.seal(fog.now, ivl=T0 + IVL, agg=closed.agg)
    assert cp is not None
    assert P.parse(cp.msg).fields[8] == closed.agg
    assert fog.close(T0 + IVL).agg == closed.agg  # once only
    assert len(fog.aggregates()) == 1


def test_a_gap_is_estimated_then_superseded_by_the_late_reading(fog: Fog):
    m = fog.meters[0]
    late = m.reading(T0 + IVL, 400)  # seq 2 stays in transit
    fog.all_read(T0 + IVL, 100, skip=(0,))
    closed = fog.close(T0 + IVL)
    [agg] = fog.aggregates()
    assert (agg[4], agg[7], agg[8], agg[13]) == (500, 5, 0, ["silent"])
    # seq 3 arrives: the gap seq 1..3 is estimated and interval T0+IVL revised
    fog.all_read(T0 + 2 * IVL, 100, skip=tuple(range(1, 6)))
    fog.tick()
    [est] = [e.fields for e in fog.entries(P.ESTIMATE)]
    assert (est[2], est[4], est[6], est[8]) == ("estimate", "linear", 1, 3)
    assert est[10] == [[T0 + IVL, 250, 0], [T0 + 2 * IVL, 250, 0]]  # 400 + 100 split linearly
    rev = fog.aggregates()[-1]
    assert (rev[16], rev[18], rev[4], rev[7], rev[8], rev[9]) == (
        1, closed.agg, 750, 5, 1, 250)
    # the true reading arrives: supersession, no new estimate, revision back to measured
    fog.send(late)
    fog.tick()
    sup = [e.fields for e in fog.entries(P.ESTIMATE)][-1]
    assert sup[2] == "supersede" and sup[13] == 2 and sup[12] == P.digest(late)
    assert len(fog.entries(P.ESTIMATE)) == 2
    rev2 = fog.aggregates()[-1]
    assert (rev2[16], rev2[4], rev2[7], rev2[8], rev2[9]) == (2, 900, 6, 0, 0)
    assert rev2[18] == P.digest(fog.entries(P.AGGREGATE)[-2].raw)
    assert fog.trail() == []
    fog.tick()
    assert len(fog.aggregates()) == 3  # nothing changed: no further revision


def test_a_long_skipped_gap_is_chunked_and_sums_exactly(fog: Fog):
    m = fog.meters[0]
    t = T0 + 200 * IVL
    fog.send(m.reading(t, 10_007, flags=P.SKIPPED))
    fog.tick()
    ests = [e.fields for e in fog.entries(P.ESTIMATE)]
    assert [len(e[10]) for e in ests] == [128, 72]
    assert sum(iv[1] for e in ests for iv in e[10]) == 10_007
    assert ests[1][9] == ests[0][10][-1][0]  # the second chunk starts where the first ends
    assert fog.trail() == []


def test_a_reset_in_the_gap_is_logged_as_unknown_and_the_meter_missing(fog: Fog):
    m = fog.meters[0]
    fog.send(m.reading(T0 + 2 * IVL, flags=P.REGISTER_RESET | P.SKIPPED, imp=5))
    fog.all_read(T0 + IVL, skip=(0,))
    fog.tick()
    [none] = [e.fields for e in fog.entries(P.ESTIMATE)]
    assert none[4] == "none" and none[10] == [[T0 + IVL], [T0 + 2 * IVL]]
    agg = fog.close(T0 + IVL)
    f = P.parse(agg.aggregates[0]).fields
    assert (f[7], f[8]) == (5, 0)
    assert fog.node.cooker.counters["vee_register_reset"] == 1


def test_a_failed_reading_is_estimated_between_its_good_neighbours(fog: Fog):
    m = fog.meters[0]
    fog.send(m.reading(T0 + IVL, 0, flags=P.SOURCE_ERROR))
    fog.all_read(T0 + IVL, skip=(0,))
    fog.send(m.reading(T0 + 2 * IVL, 300))
    fog.tick()
    [est] = [e.fields for e in fog.entries(P.ESTIMATE)]
    assert (est[6], est[8], est[10]) == (1, 3, [[T0 + IVL, 150, 0], [T0 + 2 * IVL, 150, 0]])
    f = P.parse(fog.close(T0 + IVL).aggregates[0]).fields
    assert (f[4], f[7], f[8], f[9]) == (650, 5, 1, 150)
    assert fog.node.cooker.counters["vee_flag_source_error"] == 1
    assert any(a[1] == "vee_flag_source_error" for a in fog.node.registry.alerts())


def test_small_feeders_are_merged_or_suppressed(tmp_path: Path):
    f = Fog(tmp_path, 10, privacy_min_meters=3)
    ids = [m.dev.hex() for m in f.meters]
    f.node.cooker.config = type(f.node.cooker.config)(
        IVL, tuple(parse_feeders([{"name": "a", "meters": ids[:6]},
                                {"name": "b", "meters": ids[6:8]},
                                {"name": "c", "meters": ids[8:9]}])),
        f.node.cooker.config.rules)
    f.all_read(T0)
    f.all_read(T0 + IVL)
    closed = f.close(T0 + IVL)
    aggs = {a[1]: a for a in f.aggregates()}
    assert set(aggs) == {"a", "merged"}  # b (2) + c (1) merged; "other" (1) merged too
    assert aggs["merged"][20] == ["b", "c", "other"] and aggs["merged"][6] == 4
    assert aggs["merged"][15] == P.digest(f.entries(P.AGGREGATE)[0].raw)  # chained
    assert closed.agg == P.digest(f.entries(P.AGGREGATE)[-1].raw)
    g = Fog(tmp_path / "g", 4, privacy_min_meters=5)
    g.all_read(T0)
    g.all_read(T0 + IVL)
    closed = g.close(T0 + IVL)
    assert closed.aggregates == [] and closed.agg is None and closed.suppressed == ["all"]


def test_feeder_loss_beyond_the_threshold_raises_a_theft_alert(tmp_path: Path):
    f = Fog(tmp_path, 7, privacy_min_meters=3)
    ids = [m.dev.hex() for m in f.meters]
    cfg = f.node.cooker.config
    f.node.cooker.config = type(cfg)(IVL, (Feeder("a", tuple(bytes.fromhex(x) for x in ids[1:]),
                                                  bytes.fromhex(ids[0])),), cfg.rules)
    f.all_read(T0)
    f.send(f.meters[0].reading(T0 + IVL, 6 * 100 + 20))  # 20 Wh loss: within 8 %
    f.send(*[m.reading(T0 + IVL, 100) for m in f.meters[1:]])
    closed = f.close(T0 + IVL)
    a = f.aggregates()[-1]
    assert (a[10], a[13], closed.faults) == (20, [], [])
    f.send(f.meters[0].reading(T0 + 2 * IVL, 6 * 100 + 300))  # 300 Wh of 900: theft?
    f.send(*[m.reading(T0 + 2 * IVL, 100) for m in f.meters[1:]])
    closed = f.close(T0 + 2 * IVL)
    a = f.aggregates()[-1]
    assert a[10] == 300 and a[13] == ["loss_high"]
    assert [x.kind for x in closed.faults] == ["loss_high"]


def test_outage_voltage_and_tamper_faults_are_raised_once_per_episode(fog: Fog):
    fog.send(*[m.reading(T0 + IVL, 10, flags=P.POWER_FAIL, q={1: 1900, 2: 2300})
               for m in fog.meters[:4]])
    fog.send(fog.meters[4].reading(T0 + IVL, flags=P.TAMPER))
    closed = fog.close(T0 + IVL)
    kinds = sorted(x.kind for x in closed.faults)
    assert kinds == ["outage", "tamper", "voltage_low"]
    outage = next(x for x in closed.faults if x.kind == "outage")
    assert len(outage.devs) == 5 and outage.entries  # 4 power fails + 1 silent
    assert fog.aggregates()[-1][13] == ["outage", "tamper", "voltage_low"]
    fog.send(*[m.reading(T0 + 2 * IVL, 10, flags=P.POWER_FAIL) for m in fog.meters[:4]])
    closed = fog.close(T0 + 2 * IVL)
    assert [x.kind for x in closed.faults] == []  # the outage goes on: not raised again
    fog.all_read(T0 + 3 * IVL, skip=(4, 5))
    fog.send(*[m.reading(T0 + 3 * IVL) for m in fog.meters[4:]])
    assert fog.close(T0 + 3 * IVL).faults == []
    fog.send(*[m.reading(T0 + 4 * IVL, 10, flags=P.POWER_FAIL) for m in fog.meters])
    assert [x.kind for x in fog.close(T0 + 4 * IVL).faults] == ["outage"]  # a new episode


def test_the_index_survives_a_restart_without_duplicating_entries(tmp_path: Path):
    f = Fog(tmp_path, 6)
    f.all_read(T0)
    f.send(f.meters[0].reading(T0 + 3 * IVL, 300, flags=P.SKIPPED))
    f.all_read(T0 + IVL, skip=(0,))
    f.close(T0 + IVL)
    n = f.node.log.size()
    f.node.close()
    node = FogNode(FogConfig(data_dir=tmp_path / "fog"), lambda: f.now)
    f.node = node
    assert node.cooker.close(T0 + IVL, f.now).agg is not None
    f.tick()
    assert f.node.log.size() == n
    assert f.trail() == []


def test_feeder_config_errors_name_the_entry():
    good = "00" * 8
    for doc, words in [
            ({"name": "a"}, "expected a list"),
            ([{"name": ""}], "name must be"),
            ([{"name": "merged"}], "name must be"),
            ([{"name": "a", "meters": ["zz"]}], "feeders[0].meters"),
            ([{"name": "a", "meters": [good]}, {"name": "b", "meters": [good]}],
             "in feeder 'a' already"),
            ([{"name": "a", "bogus": 1}], "unknown key 'bogus'"),
            ([{"name": "a"}, {"name": "a"}], "defined twice")]:
        with pytest.raises(FeederConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_feeders(doc)


def test_malformed_aggregates_are_rejected():
    key = P.SigningKey.from_int(7)
    good = {0: 11, 1: "a", 2: T0, 3: IVL, 4: 1, 5: 0, 6: 5, 7: 5, 8: 0, 9: 0, 13: [],
            14: 3, 15: P.ZERO32, 16: 0, 17: key.id, 19: P.ZERO32}
    P.verify(P.sign1(key, good), key.public_key)
    cases: list[tuple[dict[int, Any], str]] = [({1: ""}, r"field 1 \(feeder\) has 0 bytes"), ({2: T0 + 1}, "multiple"),
                          ({7: 6}, "exceed"), ({9: 2}, "estimated Wh"),
                          ({11: 5}, "together"), ({11: 9, 12: 8}, "together"),
                          ({13: ["nope"]}, "alerts"), ({13: ["tamper", "outage"]}, "sorted"),
                          ({16: 1}, "replaces"), ({18: P.ZERO32}, "replaces"),
                          ({20: []}, "merged"), ({10: "x"}, "field 10")]
    for change, words in cases:
        with pytest.raises(P.ProtocolError, match=words) as e:
            P.sign1(key, {**good, **change})
        assert e.value.reason == "bad_fields"


def test_intervals_missed_while_the_node_was_down_are_closed_too(fog: Fog):
    for k in (1, 2, 3):
        fog.all_read(T0 + k * IVL)
    fog.close(T0 + IVL)
    closed = fog.close(T0 + 4 * IVL)  # the closes of T0+2I and T0+3I were missed
    assert [a[2] for a in fog.aggregates()] == [T0 + IVL, T0 + 2 * IVL, T0 + 3 * IVL, T0 + 4 * IVL]
    assert [a[7] for a in fog.aggregates()] == [6, 6, 6, 0]
    assert closed.ivl == T0 + 4 * IVL and closed.agg == P.digest(fog.entries(P.AGGREGATE)[-1].raw)


def test_meters_enrolled_after_an_interval_began_are_silent_in_it_but_no_outage(tmp_path: Path):
    # a fog whose meters were all enrolled during the interval (a fresh pilot, the demo):
    # nobody expected their readings for it, so their silence is no outage
    f = Fog(tmp_path, 6)  # enrolled at T0 (the fog's clock then)
    closed = f.close(T0)  # the interval (T0 - IVL, T0]: they joined at its very end
    assert closed.faults == []
    assert "silent" in f.aggregates()[-1][13] and "outage" not in f.aggregates()[-1][13]
    closed = f.close(T0 + IVL)  # a whole interval after their enrollment: silence is news
    assert [x.kind for x in closed.faults] == ["outage"]
