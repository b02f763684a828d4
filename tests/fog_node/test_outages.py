"""Closed outage records at the fog (fog_node.cooking.outages, fog_node.chainlink.faults;
docs/PROTOCOL.md section 18): an outage opens at a feeder's first interval with an outage
fault, gathers the meters down in each of its intervals, and closes at the feeder's first
interval cooked without one, into one record per 128 meters; open outages and records not
yet reported survive a restart; revisions never make a second record; the fault reporter
queues each record once, even across a crash between cooked.db and the chain outbox, and
the chain stores it for each meter.

Real parts: a FogNode with its SQLite stores in tmp_path fed signed SPEC readings (the kit of
tests/fog_node/test_cooking.py), its ChainLink, and a running aggregator on loopback
(tests/kit/chainkit.py). Time is the test's clock, never slept on."""

from __future__ import annotations

from pathlib import Path

from fog_node.chainlink.faults import OUTAGE_MARK, FaultReporter
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.cooking.feeders import Feeder
from fog_node.cooking.outages import OpenOutage, OutageRecord
from fog_node.node import FogNode
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import chain as C
from tests.fog_node.test_cooking import IVL, T0, Fog
from tests.kit.chainkit import running_chain


def power_fail(fog: Fog, ivl: int, down: range) -> None:
    """Every meter reads at ivl; those in `down` with POWER_FAIL."""
    fog.send(*[m.reading(ivl, 10, flags=P.POWER_FAIL if i in down else 0)
               for i, m in enumerate(fog.meters)])


def devs(fog: Fog, which: range) -> tuple[bytes, ...]:
    return tuple(sorted(fog.meters[i].dev for i in which))


def restart(fog: Fog, tmp: Path) -> None:
    """The fog node stops and starts again on its data dir."""
    fog.node.close()
    fog.node = FogNode(FogConfig(data_dir=tmp / "fog", skew_s=10**7), lambda: fog.now)


def test_an_outage_closes_into_one_record_of_every_meter_it_took_down(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 6)
    fog.all_read(T0)
    cooker = fog.node.cooker
    power_fail(fog, T0 + IVL, range(0, 4))  # 4 of 6: an outage
    closed = fog.close(T0 + IVL)
    assert [f.kind for f in closed.faults] == ["outage"] and closed.outages == []
    assert cooker.open_outages() == [OpenOutage("all", T0, T0 + IVL, devs(fog, range(0, 4)))]
    power_fail(fog, T0 + 2 * IVL, range(2, 6))  # other meters, still 4 of 6
    closed = fog.close(T0 + 2 * IVL)
    assert closed.faults == [] and closed.outages == []  # one episode: no alert again
    assert cooker.open_outages() == [OpenOutage("all", T0, T0 + 2 * IVL,
                                                devs(fog, range(6)))]
    fog.all_read(T0 + 3 * IVL)  # restored
    closed = fog.close(T0 + 3 * IVL)
    record = OutageRecord(1, "all", T0, T0 + 2 * IVL, 1, 1, devs(fog, range(6)),
                          T0 + 3 * IVL + 60)
    assert closed.faults == [] and closed.outages == [record]
    assert record.detail == "feeder all restored after 1800 s: 6 meter(s)"
    assert cooker.open_outages() == [] and cooker.pending_outages(10) == [record]
    fog.all_read(T0 + 4 * IVL)
    assert fog.close(T0 + 4 * IVL).outages == [] and cooker.outage_records() == [record]
    assert cooker.counters["outage_records"] == 1


def test_each_feeder_has_its_own_outages(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 6, privacy_min_meters=3)
    cfg = fog.node.cooker.config
    ids = [m.dev for m in fog.meters]
    fog.node.cooker.config = type(cfg)(IVL, (Feeder("a", tuple(ids[:3])),
                                             Feeder("b", tuple(ids[3:]))), cfg.rules)
    fog.all_read(T0)
    fog.all_read(T0 + IVL, skip=(0, 1, 2))  # a silent
    fog.close(T0 + IVL)
    power_fail(fog, T0 + 2 * IVL, range(3, 6))  # a back, b down
    assert fog.close(T0 + 2 * IVL).outages == [
        OutageRecord(1, "a", T0, T0 + IVL, 1, 1, devs(fog, range(3)), T0 + 2 * IVL + 60)]
    assert fog.node.cooker.open_outages() == [
        OpenOutage("b", T0 + IVL, T0 + 2 * IVL, devs(fog, range(3, 6)))]
    fog.all_read(T0 + 3 * IVL)
    fog.close(T0 + 3 * IVL)
    assert [(r.feeder, r.start, r.end, r.meters) for r in fog.node.cooker.outage_records()] \
        == [("a", T0, T0 + IVL, devs(fog, range(3))),
            ("b", T0 + IVL, T0 + 2 * IVL, devs(fog, range(3, 6)))]


def test_open_outages_and_unreported_records_survive_restarts(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 6)
    fog.all_read(T0)
    power_fail(fog, T0 + IVL, range(0, 3))  # 3 of 6: 50 %, an outage
    fog.close(T0 + IVL)
    restart(fog, tmp_path)
    assert fog.node.cooker.open_outages() == [
        OpenOutage("all", T0, T0 + IVL, devs(fog, range(3)))]
    power_fail(fog, T0 + 2 * IVL, range(3, 6))
    fog.close(T0 + 2 * IVL)
    restart(fog, tmp_path)
    fog.all_read(T0 + 3 * IVL)
    [record] = fog.close(T0 + 3 * IVL).outages
    assert (record.start, record.end, record.meters) == (T0, T0 + 2 * IVL, devs(fog, range(6)))
    restart(fog, tmp_path)
    assert fog.node.cooker.pending_outages(10) == [record]
    assert fog.node.cooker.open_outages() == []


def test_a_revised_or_closed_again_interval_makes_no_second_record(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 6)
    fog.all_read(T0)
    late = [m.reading(T0 + IVL, 100) for m in fog.meters[:4]]  # in transit: 4 silent
    fog.send(*[m.reading(T0 + IVL, 100) for m in fog.meters[4:]])
    fog.close(T0 + IVL)
    fog.all_read(T0 + 2 * IVL)
    [record] = fog.close(T0 + 2 * IVL).outages
    assert (record.start, record.end, record.meters) == (T0, T0 + IVL, devs(fog, range(4)))
    fog.send(*late)  # the interval was no outage after all: its aggregate is revised
    fog.tick()
    [rev] = [a for a in fog.aggregates() if a[2] == T0 + IVL and a[16] == 1]
    assert rev[13] == [] and "outage" in fog.aggregates()[0][13]
    assert fog.close(T0 + IVL).outages == [] and fog.close(T0 + 2 * IVL).outages == []
    fog.tick()
    assert fog.node.cooker.outage_records() == [record]
    assert fog.node.cooker.open_outages() == []


def test_more_than_128_meters_down_make_records_of_at_most_128(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 130)  # enrolled at T0: silent in the next interval, all down
    fog.close(T0 + IVL)
    fog.all_read(T0 + 2 * IVL)
    first, second = fog.close(T0 + 2 * IVL).outages
    every = devs(fog, range(130))
    assert (first.meters, second.meters) == (every[:128], every[128:])
    assert {(r.start, r.end, r.parts) for r in (first, second)} == {(T0, T0 + IVL, 2)}
    assert (first.part, second.part) == (1, 2)
    assert second.detail == "feeder all restored after 900 s: 2 meter(s) (record 2 of 2)"


def test_the_reporter_queues_each_record_once_and_the_chain_keeps_it(tmp_path: Path) -> None:
    fog = Fog(tmp_path, 6)
    fog.all_read(T0)
    with running_chain(tmp_path, lambda: float(fog.now)) as chain:
        chain.register("fog", key=fog.node.key, name="district-1")
        link = ChainLink(fog.node, ChainClient(chain.url), lambda: float(fog.now))
        try:
            reporter = FaultReporter(link, lambda: None)
            power_fail(fog, T0 + IVL, range(0, 4))
            fog.close(T0 + IVL)
            fog.all_read(T0 + 2 * IVL)
            [record] = fog.close(T0 + 2 * IVL).outages
            assert reporter.flush() == 0  # before the link's first contact: it waits
            assert fog.node.cooker.pending_outages(10) == [record]
            link.step()  # first contact
            # the chain's time has not passed the outage's end yet: the chain would refuse
            # the record (outage_future) and halt the outbox, so it waits
            assert int(ChainClient(chain.url).head()["time"]) < T0 + IVL
            assert reporter.flush() == 0 and fog.node.cooker.pending_outages(10) == [record]
            chain.register("holder")  # a block at the fog's time: the outage has ended
            assert reporter.flush() == 1 and fog.node.cooker.pending_outages(10) == []
            assert reporter.counters["outage_records_queued"] == 1
            # a crash after the outbox's commit, before cooked.db's: not queued twice
            fog.node.cooker.db.execute("UPDATE outage_records SET state = NULL")
            assert reporter.flush() == 0 and fog.node.cooker.pending_outages(10) == []
            [(raw,)] = link.db.execute("SELECT tx FROM outbox WHERE kind = 'fault'").fetchall()
            assert link.db.execute("SELECT v FROM meta WHERE k = ?",
                                   (OUTAGE_MARK,)).fetchone() == ("all/1800000000/1",)
            body = P.parse(raw).fields[4]
            assert body == C.fault_body("outage", "feeder all restored after 900 s: "
                                        "4 meter(s)", T0 + 2 * IVL + 60, "none", [],
                                        meters=list(devs(fog, range(4))), start=T0,
                                        end=T0 + IVL)
            assert link.flush() == 1
            outages = ChainClient(chain.url).billing_outages(fog.meters[0].dev.hex(), T0,
                                                             T0 + 10 * IVL)
            assert outages["outages"] == [{"fault": P.digest(raw).hex(),
                                           "fog": fog.node.key.id.hex(), "start": T0,
                                           "end": T0 + IVL}]
            assert ChainClient(chain.url).billing_outages(
                fog.meters[5].dev.hex())["outages"] == []  # not down
        finally:
            link.close()
            fog.node.close()
