"""The fog node's link to the dispatch chain: anchors through a persistent outbox, exactly
once across chain outages, lost answers and fog restarts; instructions picked up.

Real parts: the fog's SQLite stores in tmp_path and a real aggregator serving HTTP on
loopback (tests/kit/chainkit.py); an outage is the aggregator's server really stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.service.api import AggregatorAPI
from aggregator.chain.service.node import open_ledger
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import chain as C
from tests.kit.chainkit import Chain, running_chain

T0 = 1_800_000_000


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Meters:
    """Signed readings from a few meters, in order, with prev links."""

    def __init__(self, node: FogNode, n: int = 3) -> None:
        self.keys = [P.SigningKey.from_int(1000 + i) for i in range(n)]
        self.seq = [0] * n
        self.prev = [P.ZERO32] * n
        self.t = T0
        for k in self.keys:
            apply_request(node, {"pub": k.public_key.raw.hex(), "status": "active"})

    def interval(self) -> list[bytes]:
        self.t += 900
        out = []
        for i, k in enumerate(self.keys):
            self.seq[i] += 1
            raw = P.sign1(k, P.reading(k.id, self.seq[i], self.t, 900, 100 * self.seq[i], 0, 0,
                                       self.prev[i]))
            self.prev[i] = P.digest(raw)
            out.append(raw)
        return out


def fog_node(tmp: Path, clock: Clock, name: str = "fog") -> FogNode:
    d = tmp / name
    if not (d / "fog.key").exists():
        init_data_dir(d)
    return FogNode(FogConfig(data_dir=d, skew_s=10**9), clock)


def chain_heights(chain: Chain, fog: bytes) -> list[int]:
    """Checkpoint heights the chain holds for the fog, in anchor order (with repeats)."""
    out: list[int] = []
    for a in chain.ledger.anchors(fog):
        out.extend(range(a.first, a.last + 1))
    return out


def grow(node: FogNode, meters: Meters, clock: Clock, seals: int = 1,
         ivl: int | None = None) -> None:
    for _ in range(seals):
        node.ingest.process(meters.interval())
        clock.t += 5
        assert node.checkpoints.seal(int(clock.t), ivl=ivl) is not None


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    clock = Clock()
    with running_chain(tmp_path, clock) as chain:
        node = fog_node(tmp_path, clock)
        chain.register("fog", key=node.key, name="district-1")
        link = ChainLink(node, ChainClient(chain.url), clock, period_s=60)
        try:
            yield chain, node, link, Meters(node), clock
        finally:
            link.close()
            node.close()


def test_checkpoints_are_anchored_in_order_and_verify_on_the_chain(setup: Any) -> None:
    chain, node, link, meters, clock = setup
    grow(node, meters, clock, seals=3)
    link.step()
    assert link.depth() == 0 and link.counters["landed"] == 1
    assert chain_heights(chain, node.key.id) == [1, 2, 3]
    assert link.anchored_height() == 3
    head = chain.ledger.anchors(node.key.id)[-1]
    assert head.size == node.log.size() and head.root == node.log.root()
    # more checkpoints continue the anchored head: one anchor per due round, never a repeat
    clock.t += 61
    grow(node, meters, clock, seals=2)
    link.step()
    assert chain_heights(chain, node.key.id) == [1, 2, 3, 4, 5]


def test_anchor_is_due_at_an_interval_close_and_otherwise_at_most_every_period(setup: Any) -> None:
    chain, node, link, meters, clock = setup
    link.step()  # sync with the chain; nothing sealed yet
    grow(node, meters, clock)
    assert link.plan() == 1  # the first one is due at once
    grow(node, meters, clock)
    assert link.plan() == 0  # 5 s later: not due
    grow(node, meters, clock, ivl=T0 + 900)
    assert link.plan() == 1  # an interval close is anchored without waiting for the period
    grow(node, meters, clock)
    clock.t += 60
    assert link.plan() == 1  # the period passed
    link.flush()
    assert chain_heights(chain, node.key.id) == [1, 2, 3, 4]


def test_a_long_backlog_is_split_into_anchors_that_each_fit_4096_bytes(setup: Any) -> None:
    chain, node, link, meters, clock = setup
    grow(node, meters, clock, seals=60)
    link.step()
    txs = [chain.ledger.tx(a.digest).tx for a in chain.ledger.anchors(node.key.id)]
    assert len(txs) > 1
    assert all(len(t) <= P.MAX_MESSAGE for t in txs)
    assert chain_heights(chain, node.key.id) == list(range(1, 61))
    nonces = [P.parse(t).fields[2] for t in txs]
    assert nonces == list(range(nonces[0], nonces[0] + len(txs)))


def _restart_chain(chain: Chain, clock: Clock) -> None:
    """Stop the aggregator's server and ledger (an outage) and serve the same data dir on the
    same port again."""
    port = int(chain.url.rsplit(":", 1)[1])
    chain.api.stop()
    chain.ledger.close()
    chain.ledger = open_ledger(chain.data_dir, clock)
    chain.api = AggregatorAPI(chain.ledger, clock)
    chain.api.start("127.0.0.1", port)


def test_anchors_queued_during_an_outage_land_afterwards_exactly_once(setup: Any) -> None:
    chain, node, link, meters, clock = setup
    grow(node, meters, clock)
    link.step()
    assert chain_heights(chain, node.key.id) == [1]
    chain.api.stop()  # the aggregator is down
    for _ in range(3):
        clock.t += 61
        grow(node, meters, clock, seals=2)
        link.step()
    assert link.depth() == 3  # signed and stored, chained onto each other
    assert link.counters["chain_unavailable"] == 3
    assert chain_heights(chain, node.key.id) == [1]
    _restart_chain(chain, clock)
    link.step()
    assert link.depth() == 0
    assert chain_heights(chain, node.key.id) == [1, 2, 3, 4, 5, 6, 7]


def test_a_lost_answer_is_resolved_by_the_chains_duplicate_receipt(setup: Any) -> None:
    chain, node, link, meters, clock = setup
    link.step()
    grow(node, meters, clock)
    assert link.plan() == 1
    (raw,) = [r[0] for r in link.db.execute("SELECT tx FROM outbox WHERE state = 'queued'")]
    # the chain took it, but the fog never heard back (crash, timeout): it sends it again
    assert ChainClient(chain.url).submit(raw).duplicate is False
    assert link.flush() == 1
    assert link.counters["landed_duplicate"] == 1
    assert chain_heights(chain, node.key.id) == [1]


def test_a_restarted_fog_resumes_its_outbox(tmp_path: Path) -> None:
    clock = Clock()
    with running_chain(tmp_path, clock) as chain:
        node = fog_node(tmp_path, clock)
        chain.register("fog", key=node.key)
        meters = Meters(node)
        link = ChainLink(node, ChainClient(chain.url), clock)
        link.step()
        chain.api.stop()
        grow(node, meters, clock, seals=2)
        link.step()
        assert link.depth() == 1
        link.close()
        node.close()  # the fog stops with an anchor still queued
        _restart_chain(chain, clock)
        node = fog_node(tmp_path, clock)
        link = ChainLink(node, ChainClient(chain.url), clock)
        grow(node, meters, clock)
        clock.t += 61
        link.step()
        assert link.depth() == 0
        assert chain_heights(chain, node.key.id) == [1, 2, 3]
        link.close()
        node.close()


def test_a_fog_whose_log_differs_from_what_it_anchored_halts(tmp_path: Path) -> None:
    clock = Clock()
    with running_chain(tmp_path, clock) as chain:
        node = fog_node(tmp_path, clock)
        chain.register("fog", key=node.key)
        grow(node, Meters(node), clock, seals=2)
        link = ChainLink(node, ChainClient(chain.url), clock)
        link.step()
        link.close()
        node.close()
        # the same key with another log: a rewritten history, or the wrong data dir
        other = tmp_path / "rewritten"
        other.mkdir()
        (other / "fog.key").write_text((tmp_path / "fog" / "fog.key").read_text())
        node2 = FogNode(FogConfig(data_dir=other, skew_s=10**9), clock)
        m2 = Meters(node2, n=2)
        grow(node2, m2, clock, seals=2)
        link2 = ChainLink(node2, ChainClient(chain.url), clock)
        link2.step()
        assert link2.halted is not None and "not this node's checkpoint" in link2.halted
        assert link2.depth() == 0 and chain_heights(chain, node2.key.id) == [1, 2]
        link2.close()
        node2.close()


def test_an_unregistered_fog_queues_nothing_until_registered(tmp_path: Path) -> None:
    clock = Clock()
    with running_chain(tmp_path, clock) as chain:
        node = fog_node(tmp_path, clock)
        grow(node, Meters(node), clock)
        link = ChainLink(node, ChainClient(chain.url), clock)
        link.step()
        assert link.counters["unregistered"] == 1 and link.depth() == 0
        chain.register("fog", key=node.key)
        link.step()
        assert chain_heights(chain, node.key.id) == [1]
        link.close()
        node.close()


def test_instructions_for_this_fog_are_recorded_once_and_others_ignored(setup: Any) -> None:
    chain, node, link, _, _ = setup
    other = chain.register("fog", name="district-2")
    mine = chain.sign(chain.key, C.INSTRUCTION, C.instruction_body(
        node.key.id, "limit", {1: 3000}, T0 + 3600, [], "feeder 4 over its rating"))
    assert chain.post(mine)[0] == 200
    assert chain.post(chain.sign(chain.key, C.INSTRUCTION, C.instruction_body(
        other.id, "relay", {1: False}, T0 + 3600)))[0] == 200
    link.step()
    link.step()
    got = link.instructions()
    assert [(d, tx) for d, _, tx, _ in got] == [(P.digest(mine), mine)]
    assert link.counters["instructions"] == 1


def test_an_instruction_not_signed_by_the_pinned_dispatch_key_is_ignored(setup: Any) -> None:
    chain, node, _, _, clock = setup
    assert chain.post(chain.sign(chain.key, C.INSTRUCTION, C.instruction_body(
        node.key.id, "ping", {}, T0 + 3600)))[0] == 200
    pinned = ChainLink(node, ChainClient(chain.url), clock,
                       dispatch_pub=P.SigningKey.from_int(7).public_key)
    pinned.step()
    assert pinned.instructions() == []
    assert pinned.counters["instructions_rejected"] == 1
    pinned.close()
