"""Type-14 energy statements of generator meters (fog_node.cooking.statements): one per
generator and closed interval, measured or estimated, naming the log entries its energy
comes from, signed by the fog; none for household meters; logged once even when late data
makes one due after the close or the fog restarts; carried by anchors in body key 4.
Real SQLite stores in a temporary data dir; meters are signing keys making SPEC readings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fog_node.chainlink.link import build_anchor
from fog_node.config import FogConfig, load_config, parse_generators
from fog_node.cooking import statements as S
from fog_node.log.checkpoints import Checkpoint
from fog_node.node import FogNode, init_data_dir, stated_meters
from meterledger import wire as P
from meterledger.errors import ConfigError
from meterledger.wire import anchor as A
from meterledger.wire import chain as C

T0 = 1_800_000_000  # a multiple of 900
IVL = 900
CHAIN_ID = bytes(range(8))


class Meter:
    """A meter as the fog sees it: signed readings with seq, prev and registers."""

    def __init__(self, n: int) -> None:
        self.key = P.SigningKey.from_int(0xB0000 + n)
        self.dev = self.key.id
        self.seq = 0
        self.prev = P.ZERO32
        self.imp = 10_000 * n
        self.exp = 500 * n

    def reading(self, t: int, imp_wh: int = 100, exp_wh: int = 0) -> bytes:
        self.seq += 1
        self.imp += imp_wh
        self.exp += exp_wh
        raw = P.sign1(self.key, P.reading(self.dev, self.seq, t, IVL, self.imp, self.exp, 0,
                                          self.prev))
        self.prev = P.digest(raw)
        return raw


class Fog:
    """A fog node with `n` meters, the first `gens` of them generators."""

    def __init__(self, tmp: Path, n: int, gens: int) -> None:
        self.dir = tmp / "fog"
        init_data_dir(self.dir)
        self.now = T0
        self.meters = [Meter(i) for i in range(n)]
        self.gens = [m.dev for m in self.meters[:gens]]
        self.node = self.open()
        for m in self.meters:
            self.node.ingest.decide(m.key.public_key.raw, "active", "test")

    def open(self) -> FogNode:
        node = FogNode(FogConfig(data_dir=self.dir, skew_s=10**7,
                                 generators=[d.hex() for d in self.gens]), lambda: self.now)
        # the Cooker's config as the node builds it from FogConfig.generators
        node.cooker.config = dataclasses.replace(node.cooker.config, generators=tuple(self.gens))
        return node

    def restart(self) -> None:
        self.node.close()
        self.node = self.open()

    def send(self, *raws: bytes) -> None:
        outcomes, _ = self.node.ingest.process(list(raws))
        assert all(o.status == "logged" for o in outcomes), outcomes

    def all_read(self, t: int, skip: tuple[int, ...] = ()) -> None:
        self.send(*[m.reading(t, 100 + 10 * i, 50 * i) for i, m in enumerate(self.meters)
                    if i not in skip])

    def seal(self) -> None:
        self.node.checkpoints.seal(self.now, force=True)

    def close(self, ivl: int) -> Any:
        """An interval close as the scheduler makes it: chunks sealed, then the close's
        checkpoint naming its agg."""
        self.now = ivl + 60
        closed = self.node.cooker.close(ivl, self.now, self.seal)
        self.node.checkpoints.seal(self.now, ivl=ivl, agg=closed.agg)
        return closed

    def tick(self) -> list[bytes]:
        self.now += 5
        return self.node.cooker.tick(self.now, self.seal)

    def statements(self) -> list[tuple[int, P.Fields]]:
        """(log index, fields) of every type-14 entry, each verified with the fog's key."""
        log, out = self.node.log, []
        for i in range(log.size()):
            m = P.parse(log.entry(i))
            if m.type == P.STATEMENT:
                assert m.kid == self.node.key.id
                out.append((i, P.verify_message(m, self.node.key.public_key).fields))
        return out

    def entry(self, i: int) -> P.Fields:
        return P.parse(self.node.log.entry(i)).fields


@pytest.fixture
def fog(tmp_path: Path) -> Fog:
    f = Fog(tmp_path, 6, 2)
    f.all_read(T0)
    return f


def _checkpoints(fog: Fog, first: int) -> list[Checkpoint]:
    latest = fog.node.checkpoints.latest()
    assert latest is not None
    return [c for h in range(first, latest.height + 1)
            if (c := fog.node.checkpoints.at_height(h)) is not None]


def _measured_ok(fog: Fog, st: P.Fields, ivl: int) -> None:
    """The statement's energy is the register difference of the readings it names, the
    first at the interval's start and the last at its end, consecutive."""
    readings = [fog.entry(i) for i in st[7]]
    assert all(r[0] == P.READING and r[1] == st[1] for r in readings)
    assert [r[2] for r in readings] == list(range(readings[0][2], readings[0][2] + len(readings)))
    first, last = readings[0], readings[-1]
    assert (first[3], last[3]) == (ivl - IVL, ivl)
    assert (st[4], st[5]) == (last[5] - first[5], last[6] - first[6])
    assert (st[2], st[3], st[6]) == (ivl, IVL, 0) and max(st[7]) < st[8]


def test_a_generator_gets_one_measured_statement_per_closed_interval(fog: Fog):
    for k in (1, 2, 3):
        fog.all_read(T0 + k * IVL)
        closed = fog.close(T0 + k * IVL)
        assert len(closed.statements) == 2 and closed.aggregates
        fog.tick()
    sts = fog.statements()
    assert sorted((f[1], f[2]) for _, f in sts) == sorted(
        (d, T0 + k * IVL) for d in fog.gens for k in (1, 2, 3))
    for _, st in sts:
        _measured_ok(fog, st, st[2])
        assert st[17] == fog.node.key.id
    m1 = [f for _, f in sts if f[1] == fog.gens[1]]
    assert [(f[4], f[5]) for f in m1] == [(110, 50)] * 3
    assert fog.node.cooker.counters["statements_logged"] == 6
    # a close's statements come before its aggregates, so its checkpoint still names its agg
    agg_leaves = [i for i in range(fog.node.log.size())
                  if P.parse(fog.node.log.entry(i), schema=False).type == P.AGGREGATE]
    for leaf, st in sts:
        ivl_aggs = [i for i in agg_leaves if fog.entry(i)[2] == st[2]]
        assert leaf < min(ivl_aggs)
    cp = fog.node.checkpoints.latest()
    assert cp is not None and P.parse(cp.msg).fields[7] == T0 + 3 * IVL


def test_household_meters_get_no_statement(fog: Fog):
    fog.all_read(T0 + IVL)
    fog.close(T0 + IVL)
    stated = {f[1] for _, f in fog.statements()}
    assert stated == set(fog.gens)
    assert not stated & {m.dev for m in fog.meters[2:]}


def test_a_generator_not_enrolled_or_revoked_gets_none(tmp_path: Path):
    f = Fog(tmp_path, 6, 2)
    f.node.ingest.decide(f.meters[1].key.public_key.raw, "revoked", "test")
    f.all_read(T0, skip=(1,))
    f.all_read(T0 + IVL, skip=(1,))
    f.close(T0 + IVL)
    assert [st[1] for _, st in f.statements()] == [f.gens[0]]


def test_a_late_reading_makes_the_statement_once(fog: Fog):
    g = fog.meters[0]
    late = g.reading(T0 + IVL, 120, 60)  # seq 2 stays in transit over the close
    fog.all_read(T0 + IVL, skip=(0,))
    closed = fog.close(T0 + IVL)
    assert [f[1] for f in (P.parse(m).fields for m in closed.statements)] == [fog.gens[1]]
    fog.send(late)
    fog.tick()
    mine = [(i, f) for i, f in fog.statements() if f[1] == g.dev]
    assert len(mine) == 1
    _measured_ok(fog, mine[0][1], T0 + IVL)
    assert (mine[0][1][4], mine[0][1][5]) == (120, 60)
    # closing again, ticking again, a restart: never a second one
    n = fog.node.log.size()
    fog.tick()
    fog.node.cooker.close(T0 + IVL, fog.now, fog.seal)
    fog.restart()
    fog.tick()
    fog.node.cooker.close(T0 + IVL, fog.now, fog.seal)
    assert fog.node.log.size() == n
    fog.all_read(T0 + 2 * IVL)
    fog.close(T0 + 2 * IVL)
    keys = [(f[1], f[2]) for _, f in fog.statements()]
    assert len(keys) == len(set(keys)) == 4


def test_an_estimated_interval_is_stated_with_its_estimate_and_never_again(fog: Fog):
    g = fog.meters[0]
    late = g.reading(T0 + IVL, 200, 100)
    fog.all_read(T0 + IVL, skip=(0,))
    fog.close(T0 + IVL)
    fog.all_read(T0 + 2 * IVL)  # seq 3 of the generator: the gap seq 1..3 is estimated
    fog.tick()
    [(est_leaf, est)] = [(i, fog.entry(i)) for i in range(fog.node.log.size())
                         if fog.entry(i)[0] == P.ESTIMATE]
    [(_, st)] = [(i, f) for i, f in fog.statements() if f[1] == g.dev]
    assert (st[2], st[6], st[7]) == (T0 + IVL, 1, [est_leaf])
    assert [st[4], st[5]] == [v for item in est[10] if item[0] == T0 + IVL for v in item[1:]]
    fog.close(T0 + 2 * IVL)
    assert [(f[2], f[6]) for _, f in fog.statements() if f[1] == g.dev] == [
        (T0 + IVL, 1), (T0 + 2 * IVL, 1)]
    # the true reading supersedes the estimate: the statements stand, none is added
    fog.send(late)
    fog.tick()
    assert len([f for _, f in fog.statements() if f[1] == g.dev]) == 2


def test_statements_logged_before_a_crash_are_not_logged_again(fog: Fog):
    fog.all_read(T0 + IVL)
    cooker = fog.node.cooker
    fog.now = T0 + IVL + 60
    cooker.catch_up(fog.now)
    before = fog.node.log.size()
    # the statements reach the log, then the node dies before indexing them or closing
    cooker._log_statements(cooker._due(T0 + IVL), fog.now, None)
    cooker.db.execute("DELETE FROM statements")
    cooker.db.execute("UPDATE meta SET v = ? WHERE k = 'cursor'", (before,))
    fog.restart()
    closed = fog.close(T0 + IVL)
    assert closed.statements == [] and closed.aggregates
    assert len(fog.statements()) == 2


def test_many_generators_are_chunked_with_a_checkpoint_between(tmp_path: Path):
    f = Fog(tmp_path, 25, 23)
    f.all_read(T0)
    f.all_read(T0 + IVL)
    closed = f.close(T0 + IVL)
    assert len(closed.statements) == 23
    cps = _checkpoints(f, 1)
    cooker = f.node.cooker
    base = 0
    for cp in cps:
        assert len(cooker.statements_in(base, cp.size)) <= S.STATEMENTS_PER_CHECKPOINT
        base = cp.size
    # every checkpoint's range fits an anchor of its own, and all of them one by one
    head = None
    carried: list[bytes] = []
    while cps:
        raw, n = build_anchor(f.node.key, CHAIN_ID, 1, head, cps, f.node.log, f.now,
                              cooker.aggregates_in, lambda d: False, cooker.statements_in)
        carried += P.parse(raw).fields[4].get(4, [])
        head, cps = cps[n - 1], cps[n:]
    assert carried == closed.statements


def test_an_anchor_carries_the_statements_since_the_previous_one(fog: Fog):
    cooker = fog.node.cooker
    fog.all_read(T0 + IVL)
    first = fog.close(T0 + IVL)
    cps = _checkpoints(fog, 1)
    raw, n = build_anchor(fog.node.key, CHAIN_ID, 1, None, cps, fog.node.log, fog.now,
                          cooker.aggregates_in, lambda d: False, cooker.statements_in)
    assert n == len(cps)
    body = P.parse(raw).fields[4]
    assert body[4] == first.statements
    checked = A.checked_anchor(body, fog.node.key.public_key, None)
    assert [s.raw for s in checked.statements] == first.statements
    known = {P.digest(a) for a in body.get(3, [])}
    # the next anchor carries only what was logged after the first one's checkpoints
    head = cps[-1]
    fog.all_read(T0 + 2 * IVL)
    second = fog.close(T0 + 2 * IVL)
    cps2 = _checkpoints(fog, head.height + 1)
    raw2, _ = build_anchor(fog.node.key, CHAIN_ID, 2, head, cps2, fog.node.log, fog.now,
                           cooker.aggregates_in, known.__contains__, cooker.statements_in)
    body2 = P.parse(raw2).fields[4]
    assert body2[4] == second.statements and not set(body2[4]) & set(first.statements)
    checked2 = A.checked_anchor(body2, fog.node.key.public_key,
                                A.AnchoredHead.of(P.parse(head.msg)), known.__contains__)
    assert [(s.fields[1], s.fields[2]) for s in checked2.statements] == [
        (d, T0 + 2 * IVL) for d in sorted(fog.gens)]
    # without statements (an older caller): no key 4
    raw3, _ = build_anchor(fog.node.key, CHAIN_ID, 2, head, cps2, fog.node.log, fog.now,
                           cooker.aggregates_in, known.__contains__)
    assert 4 not in P.parse(raw3).fields[4]
    assert C.ANCHOR == P.parse(raw3).fields[3]


@pytest.mark.parametrize("value,words", [
    ('["00112233445566"]', "'00112233445566' is not a meter id (16 hex characters"),
    ('["00112233445566zz"]', "is not a meter id"),
    ('["0011223344556677", "0011223344556677"]', "meter 0011223344556677 is listed twice"),
    ('["00112233445566aa", "00112233445566AA"]', "meter 00112233445566aa is listed twice"),
    ('"0011223344556677,00112233445566AA,0011223344556677"', "listed twice"),
    ("[1]", "expected a list of meter ids"),
    ("5", "expected a list of meter ids"),
])
def test_a_bad_generators_setting_is_a_one_line_error(tmp_path: Path, value: str, words: str):
    path = tmp_path / "fog.toml"
    path.write_text(f"[fog]\ngenerators = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert "generators: " in str(e.value) and words in str(e.value)
    assert "\n" not in str(e.value)


def test_good_generators_settings_are_read(tmp_path: Path):
    path = tmp_path / "fog.toml"
    path.write_text('[fog]\ngenerators = ["00112233445566AA", "8899aabbccddeeff"]\n')
    assert load_config(path, {}).generators == ["00112233445566aa", "8899aabbccddeeff"]
    assert load_config(None, {}).generators == []
    assert parse_generators("0011223344556677, 8899aabbccddeeff") == [
        "0011223344556677", "8899aabbccddeeff"]
    assert parse_generators("") == []
    with pytest.raises(ValueError, match="listed twice"):
        parse_generators("0011223344556677,0011223344556677")


def test_intervals_closed_late_get_their_statements_too(fog: Fog):
    fog.all_read(T0 + IVL)
    fog.close(T0 + IVL)
    fog.all_read(T0 + 2 * IVL)
    fog.all_read(T0 + 3 * IVL)
    fog.close(T0 + 3 * IVL)  # the close of T0+2I was missed while the node was down
    got = sorted((f[2], f[1]) for _, f in fog.statements())
    assert got == sorted((T0 + k * IVL, d) for k in (1, 2, 3) for d in fog.gens)
    for _, st in fog.statements():
        _measured_ok(fog, st, st[2])


def test_energy_that_is_not_the_register_difference_is_not_stated(fog: Fog):
    cooker = fog.node.cooker
    real = cooker._meter_intervals

    def off_by_one(devs: set[bytes], ivl: int) -> dict[bytes, Any]:
        return {d: dataclasses.replace(mi, imp=mi.imp + 1) for d, mi in real(devs, ivl).items()}

    cooker._meter_intervals = off_by_one  # type: ignore[method-assign]
    fog.all_read(T0 + IVL)
    assert fog.close(T0 + IVL).statements == []
    assert cooker.counters["statements_skipped_registers"] == 2


def test_a_household_that_consented_to_the_market_gets_statements_and_no_other(
        tmp_path: Path) -> None:
    """`market_meters` (docs/PROTOCOL.md section 27): a consenting household's energy leaves
    the fog as statements, like a generator's; the households that did not consent, never."""
    path = tmp_path / "fog.toml"
    fog = Fog(tmp_path, 4, 1)
    market = fog.meters[2].dev.hex()
    path.write_text(f'[fog]\ngenerators = ["{fog.gens[0].hex()}"]\n'
                    f'market_meters = ["{market}", "{fog.gens[0].hex()}"]\n')
    config = load_config(path, {})
    assert stated_meters(config) == (fog.gens[0], fog.meters[2].dev)
    fog.node.close()
    fog.gens = list(stated_meters(config))
    fog.node = fog.open()
    fog.all_read(T0)
    fog.all_read(T0 + IVL)
    fog.close(T0 + IVL)
    assert sorted(f[1] for _, f in fog.statements()) == sorted(fog.gens)
    assert [(f[4], f[5]) for _, f in fog.statements() if f[1] == fog.meters[2].dev] == \
        [(120, 100)]
    fog.node.close()
