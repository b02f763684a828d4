"""No signed message can stop a fog for the others (issue 13).

A meter holds a valid key, so it can sign anything: every field of every message type at,
just inside and just outside its range (docs/PROTOCOL.md section 4a), the int64 edges and
beyond them. Each such message goes through a real fog node on real SQLite files, then the
node seals at an interval close (cooking, checkpoint), builds the anchor the chain would
check, restarts, and must still log and ack another meter's reading. Nothing may raise;
a value outside its range must be refused, with its reason, before anything is stored.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fog_node.chainlink.link import build_anchor
from fog_node.config import FogConfig
from fog_node.ingest import LOGGED, REJECTED
from fog_node.node import FogNode, init_data_dir
from fog_node.scheduler import Scheduler
from meterledger import wire as P
from meterledger.infra.clock import ManualClock
from meterledger.wire import reasons
from meterledger.wire.meter import Q_RANGES
from tests.kit.payloads import CHAIN_ID, METER, T0, base_payload, history

OTHER = P.SigningKey.from_int(0x07E4)


def _edges(lo: int, hi: int) -> list[int]:
    return [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1]


INT_EDGES = [-(2**64), -(2**63) - 1, -(2**63), -1, 0, 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63,
             2**64 - 1]
LENGTHS = [0, 1, 16, 17, 32, 33, 64, 65, 255, 256, 1000]


@st.composite
def int_value(draw: st.DrawFn, r: tuple[int, int] | None) -> int:
    """Mostly the edges inside the range (valid but extreme values must flow through
    cooking and anchoring), else just outside it, else the int64 edges and beyond."""
    mode = draw(st.sampled_from(("in", "in", "in", "out", "int64")))
    if r is not None and mode == "in":
        lo, hi = r
        return draw(st.sampled_from([v for v in (lo, lo + 1, hi - 1, hi) if lo <= v <= hi]))
    if r is not None and mode == "out":
        return draw(st.sampled_from((r[0] - 1, r[1] + 1)))
    return draw(st.sampled_from(INT_EDGES))


@st.composite
def hostile_value(draw: st.DrawFn, t: int, key: int) -> Any:
    r = P.RANGES.get(t, {}).get(key)
    kind = P.SCHEMAS[t].get(key, "u").removesuffix("?")
    if key == 9 and t == P.READING:  # q: entries at their edges
        qks = draw(st.lists(st.sampled_from(sorted(Q_RANGES)), min_size=1, unique=True))
        return {k: draw(int_value(Q_RANGES[k])) for k in sorted(qks)}
    if kind in ("u", "i") and draw(st.integers(0, 4)):
        return draw(int_value(r))
    n = draw(st.sampled_from(LENGTHS + ([r[0], r[1], r[1] + 1] if r is not None else [])))
    n = max(0, min(n, 5000))  # longer cannot fit in a 4096-byte message anyway
    return draw(st.one_of(
        st.sampled_from(INT_EDGES),
        st.just("é" * n if kind == "t" else "x" * n),
        st.just(bytes(n)),
        st.just([0] * min(n, 300)),
        st.just({}),
    ))


@st.composite
def hostile_message(draw: st.DrawFn, fog: bytes, before: list[bytes]) -> tuple[dict[int, Any], bool]:
    """A payload with 1-3 fields replaced; and whether some field is outside its range.
    Mostly the types a meter sends (reading, birth, result), every type sometimes."""
    t = draw(st.sampled_from((1, 1, 1, 1, 2, 5, *sorted(P.SCHEMAS))))
    f = base_payload(t, fog, before)
    keys = sorted(k for k in P.SCHEMAS[t] if k not in (0, P.SIGNER_FIELD[t]))
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        f[key] = draw(hostile_value(t, key))
    return f, _outside_a_range(f)


def _outside_a_range(f: dict[int, Any]) -> bool:
    for key, r in P.RANGES.get(f[0], {}).items():
        v = f.get(key)
        if v is not None and v.__class__ is int and not r[0] <= v <= r[1]:
            return True
    q = f.get(9) if f[0] == P.READING else None
    return isinstance(q, dict) and any(
        isinstance(v, int) and k in Q_RANGES and not Q_RANGES[k][0] <= v <= Q_RANGES[k][1]
        for k, v in q.items())


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fog data dir made once (keys, CA); each example works on a copy of it."""
    d = tmp_path_factory.mktemp("fog-template")
    init_data_dir(d)
    return d


@pytest.fixture(scope="module")
def fog_id(template: Path) -> bytes:
    return P.PublicKey(bytes.fromhex((template / "fog.pub").read_text().strip())).id


def _open(d: Path, clock: ManualClock) -> FogNode:
    cfg = FogConfig(data_dir=d, interval_s=900, grace_s=60, skew_s=300, privacy_min_meters=1)
    return FogNode(cfg, clock)


@pytest.fixture
def workdir(template: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def _ingest(node: FogNode, raws: list[bytes], dev: bytes) -> list[Any]:
    with node.lock:
        outs, acks = node.ingest.process(raws, [dev] * len(raws))
    return [outs, acks]


def through_the_fog(template: Path, workdir: Path, before: list[bytes],
                    fields: dict[int, Any]) -> Any:
    """Send METER's readings `before`, then `fields` signed by METER, through a fog made from
    `template`; close the interval, build the anchor, restart, and check another meter is
    still logged and acked. Returns the outcome of `fields` (None if CBOR cannot carry it)."""
    try:
        raw = P.sign1_encoded(METER, P.encode(fields))
    except P.ProtocolError:  # beyond CBOR itself (>= 2^64): no one can send it
        return None
    d = workdir / "fog"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(template, d)
    clock = ManualClock(T0 + 1800 + 30)
    node = _open(d, clock)
    try:
        with node.lock:
            node.ingest.decide(METER.public_key.raw, "active", "test")
            node.ingest.decide(OTHER.public_key.raw, "active", "test")
        scheduler = Scheduler(node, clock, lambda cp: None)
        if before:
            assert [o.status for o in _ingest(node, before, METER.id)[0]] == [LOGGED] * len(before)
        outs, _acks = _ingest(node, [raw], METER.id)
        outcome = outs[0]
        size_after = node.log.size()
        # the fog goes on: cooking and the checkpoint at the interval close
        clock.advance(900 + 31)  # T0 + 2700 + 61: the interval's close plus grace
        scheduler.tick()
        latest = node.checkpoints.latest()
        assert latest is not None and latest.size >= size_after
        # the anchor the chain would check (A.check_anchor runs inside build_anchor)
        cps = [c for h in range(1, latest.height + 1)
               if (c := node.checkpoints.at_height(h)) is not None]
        build_anchor(node.key, CHAIN_ID, 1, None, cps, node.log, int(clock()),
                     node.cooker.aggregates_in, lambda d_: False)
    finally:
        node.close()
    # restart: recovery re-reads the log; then another meter's reading is logged and acked
    node = _open(d, clock)
    try:
        good = P.sign1(OTHER, P.reading(OTHER.id, 1, T0 + 2700, 900, 5, 0, 0, bytes(32)))
        clock.advance(9)
        outs, acks = _ingest(node, [good], OTHER.id)
        assert outs[0].status == LOGGED, outs[0]
        assert [dev for dev, _ in acks] == [OTHER.id]
        Scheduler(node, clock, lambda cp: None).tick()
    finally:
        node.close()
    return outcome


def _refused_by_the_checks(outcome: Any) -> bool:
    # refused by the message checks (SPEC section 3 order: size, encoding, range, schema),
    # or for its type or a birth's key: never by a later policy, never stored
    return outcome.status == REJECTED and outcome.reason in (
        *reasons.ENVELOPE, "wrong_type", "bad_public_key")


# the probe's findings (issue 13): each of these stopped sealing, acks or the restart
@pytest.mark.parametrize("key,value", [(2, 2**63), (5, 2**63), (6, 2**64 - 1), (4, 2**63),
                                       (7, 2**63), (9, {5: -(2**63) - 1}), (9, {3: 2**63})],
                         ids=["seq", "imp", "exp", "dur", "flags", "q_temp", "q_p_imp_max"])
def test_integers_beyond_int64_are_refused_and_the_fog_goes_on(template: Path, workdir: Path,
                                                               key: int, value: Any) -> None:
    fields = {**base_payload(P.READING, b""), key: value}
    outcome = through_the_fog(template, workdir, [], fields)
    assert (outcome.status, outcome.reason) == (REJECTED, "out_of_range")


def test_unsynced_t_beyond_int64_is_refused(template: Path, workdir: Path) -> None:
    fields = {**base_payload(P.READING, b""), 3: 2**63, 7: P.CLOCK_UNSYNCED}
    outcome = through_the_fog(template, workdir, [], fields)
    assert (outcome.status, outcome.reason) == (REJECTED, "out_of_range")


@pytest.mark.parametrize("key,value", [(2, 2**32), (3, 2**32), (5, 10**12), (6, 10**12)],
                         ids=["seq", "t", "imp", "exp"])
def test_values_past_their_field_range_are_bad_fields(template: Path, workdir: Path,
                                                      key: int, value: int) -> None:
    fields = {**base_payload(P.READING, b""), key: value, 7: P.CLOCK_UNSYNCED}
    outcome = through_the_fog(template, workdir, [], fields)
    assert (outcome.status, outcome.reason) == (REJECTED, "bad_fields")
    assert f"field {key} (" in outcome.detail and "outside" in outcome.detail


def test_extreme_valid_readings_are_logged_cooked_and_anchored(template: Path,
                                                               workdir: Path) -> None:
    # the top of every range at once, after a gap: logged, estimated, aggregated, anchored
    before = history(2)
    fields = {**base_payload(P.READING, b"", before), 3: P.TIME_MAX, 5: P.REGISTER_MAX,
              6: P.REGISTER_MAX, 7: 0xFF, 9: {k: r[1] for k, r in Q_RANGES.items()}}
    outcome = through_the_fog(template, workdir, before, fields)
    assert outcome.status == LOGGED, outcome


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_signed_message_can_stop_the_fog(template: Path, fog_id: bytes, workdir: Path,
                                            data: st.DataObject) -> None:
    before = history(data.draw(st.integers(0, 2)))
    fields, outside = data.draw(hostile_message(fog_id, before))
    outcome = through_the_fog(template, workdir, before, fields)
    if outcome is None:
        return
    event(f"type {fields[0]}: {outcome.status} {outcome.reason}")
    if outside:
        assert _refused_by_the_checks(outcome), (outcome, fields)
