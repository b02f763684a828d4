"""A fog anchors its log to the dispatch chain and to registry chains (the green-certificate
and carbon chains, `registry_chains`): every chain gets every checkpoint and every energy
statement of the generator meters once, from its own outbox with its own nonce; a registry
chain away (stopped, or hanging) delays only its own anchors, which land when it is back;
a fog restart resumes every outbox; a bad setting is a one-line error.

Real parts: two aggregators serving HTTP on loopback, each with its own dispatch key and
chain id (tests/kit/chainkit.py), a FogNode with its SQLite stores in tmp_path, its cooker
signing the statements, and the links fog_node.__main__ runs (ChainLinks.configured). An
outage is the chain's server and ledger really stopped; a hang is a real socket that never
answers. The meters are signing keys making SPEC readings; time is a manual clock."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fog_node.__main__ as fog_main
from aggregator.chain.service.api import AggregatorAPI
from aggregator.chain.service.node import open_ledger
from aggregator.dispatch.suggestions import open_dispatcher
from fog_node.api import FogAPI
from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.link import OUTBOX, ChainLink
from fog_node.chainlink.links import ChainLinks
from fog_node.config import FogConfig, load_config, parse_chain_urls, registry_outbox
from fog_node.node import FogNode, init_data_dir
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.errors import ConfigError
from meterledger.wire import chain as C
from tests.kit.chainkit import Chain, start_chain
from tests.kit.fogkit import wait

T0 = 1_800_000_000  # a multiple of 900
IVL = 900


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Meter:
    """Signed readings with seq, prev and registers, one per interval end."""

    def __init__(self, n: int) -> None:
        self.key = P.SigningKey.from_int(0xC0000 + n)
        self.dev = self.key.id
        self.seq, self.prev, self.imp, self.exp = 0, P.ZERO32, 10_000 * n, 0

    def reading(self, t: int) -> bytes:
        self.seq += 1
        self.imp += 100
        self.exp += 400
        raw = P.sign1(self.key, P.reading(self.dev, self.seq, t, IVL, self.imp, self.exp, 0,
                                          self.prev))
        self.prev = P.digest(raw)
        return raw


class Fog:
    """A fog node with five meters, the first a generator, anchoring to `chains[0]` (the
    dispatch chain) and to the others as registry chains."""

    def __init__(self, tmp: Path, clock: Clock, chains: list[Chain]) -> None:
        self.dir, self.clock, self.chains = tmp / "fog", clock, chains
        init_data_dir(self.dir)
        self.meters = [Meter(i) for i in range(5)]
        self.config = FogConfig(data_dir=self.dir, skew_s=10**9, chain_url=chains[0].url,
                                registry_chains=[c.url for c in chains[1:]],
                                generators=[self.meters[0].dev.hex()])
        self.ivl = T0
        self.node, self.links = self.open()
        for c in chains:
            c.register("fog", key=self.node.key, name="district-1")
        with self.node.lock:
            for m in self.meters:
                self.node.ingest.decide(m.key.public_key.raw, "active", "test")
            self.node.ingest.process([m.reading(self.ivl) for m in self.meters])

    def open(self) -> tuple[FogNode, ChainLinks]:
        node = FogNode(self.config, self.clock)
        return node, ChainLinks.configured(node, self.clock)

    def close_interval(self) -> None:
        """Every meter reads at the next interval's end, which closes: the generator's
        statement, the feeder's aggregate, a checkpoint naming the close."""
        self.ivl += IVL
        self.clock.t = now = self.ivl + 60
        node = self.node
        with node.lock:
            node.ingest.process([m.reading(self.ivl) for m in self.meters])
            closed = node.cooker.close(self.ivl, now,
                                       lambda: node.checkpoints.seal(now, force=True))
            assert node.checkpoints.seal(now, ivl=self.ivl, agg=closed.agg) is not None

    def step(self) -> None:
        for link in self.links.links:
            link.step()

    def heights(self) -> list[int]:
        latest = self.node.checkpoints.latest()
        return list(range(1, latest.height + 1)) if latest else []

    def statements(self) -> list[bytes]:
        """Digests of the type-14 statements in the log, in log order."""
        log = self.node.log
        return [P.digest(raw) for raw in (log.entry(i) for i in range(log.size()))
                if P.parse(raw, schema=False).type == P.STATEMENT]

    def close(self) -> None:
        self.links.close()
        self.node.close()


def chain_heights(chain: Chain, fog: bytes) -> list[int]:
    """Checkpoint heights the chain holds for the fog, in anchor order (with repeats)."""
    return [h for a in chain.ledger.anchors(fog) for h in range(a.first, a.last + 1)]


def anchor_txs(chain: Chain, fog: bytes) -> list[P.Fields]:
    return [P.parse(chain.ledger.tx(a.digest).tx).fields for a in chain.ledger.anchors(fog)]


def chain_statements(chain: Chain, fog: bytes) -> list[bytes]:
    """Digests of the statements the fog's anchors carried to the chain, in order."""
    return [P.digest(s) for f in anchor_txs(chain, fog) for s in f[4].get(4, [])]


def restart_chain(chain: Chain, clock: Clock) -> None:
    """The chain's server and ledger stopped (an outage), then served again from its data dir
    on the same port."""
    port = int(chain.url.rsplit(":", 1)[1])
    chain.api.stop()
    chain.dispatcher.store.close()
    chain.ledger.close()
    chain.ledger = open_ledger(chain.data_dir, clock)
    chain.dispatcher = open_dispatcher(chain.ledger, chain.key, chain.data_dir, clock)
    chain.api = AggregatorAPI(chain.ledger, clock, chain.dispatcher, chain.token)
    chain.api.start("127.0.0.1", port)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Fog, Chain, Chain]]:
    clock = Clock()
    dispatch = start_chain(tmp_path / "dispatch", clock)
    gc = start_chain(tmp_path / "gc", clock)
    fog = Fog(tmp_path, clock, [dispatch, gc])
    try:
        yield fog, dispatch, gc
    finally:
        fog.close()
        gc.close()
        dispatch.close()


def test_both_chains_get_every_checkpoint_and_statement_once(world: Any) -> None:
    fog, dispatch, gc = world
    assert dispatch.chain_id != gc.chain_id
    for _ in range(3):
        fog.close_interval()
        fog.step()
    me = fog.node.key.id
    stated = fog.statements()
    assert len(stated) == 3  # one per closed interval of the generator
    for chain in (dispatch, gc):
        assert chain_heights(chain, me) == fog.heights()
        head = chain.ledger.anchors(me)[-1]
        assert (head.size, head.root) == (fog.node.log.size(), fog.node.log.root())
        assert chain_statements(chain, me) == stated
        txs = anchor_txs(chain, me)  # signed for that chain, with that chain's nonces
        assert {f[6] for f in txs} == {chain.chain_id}
        assert [f[2] for f in txs] == list(range(1, len(txs) + 1))
    main, (registry,) = fog.links.main, fog.links.registry
    assert main is not None and main.db_path.name == OUTBOX == "chain.db"
    port = gc.url.rsplit(":", 1)[1]
    assert registry.db_path == fog.dir / f"chain-registry-127.0.0.1-{port}.db"
    assert registry.anchored_height() == main.anchored_height() == fog.heights()[-1]


def test_only_the_dispatch_chain_s_instructions_are_picked_up(world: Any) -> None:
    fog, dispatch, gc = world
    for chain in (dispatch, gc):  # each signed by that chain's dispatch key, for this fog
        assert chain.post(chain.sign(chain.key, C.INSTRUCTION, C.instruction_body(
            fog.node.key.id, "ping", {}, T0 + 3600)))[0] == 200
    fog.step()
    main, (registry,) = fog.links.main, fog.links.registry
    assert main is not None and len(main.instructions()) == 1 and registry.instructions() == []
    assert registry.counters["instructions"] == registry.counters["instructions_rejected"] == 0
    with pytest.raises(ValueError, match="takes no instructions"):
        Dispatcher(fog.node, registry, lambda dev, msg: None, fog.clock)


def test_a_registry_chain_away_delays_only_itself_and_catches_up(world: Any) -> None:
    fog, dispatch, gc = world
    me = fog.node.key.id
    fog.close_interval()
    fog.step()
    api = FogAPI(fog.node, registry_chains=fog.links.statuses)
    try:
        gc.api.stop()  # the registry chain is away
        for _ in range(3):
            fog.close_interval()
            fog.step()
        assert chain_heights(dispatch, me) == fog.heights()  # the dispatch chain is not held up
        assert chain_statements(dispatch, me) == fog.statements()
        (registry,) = fog.links.registry
        assert registry.depth() == 3 and registry.counters["chain_unavailable"] == 3
        status, _, body = api.handle("/healthz")
        (doc,) = json.loads(body)["registry_chains"]
        assert status == 200 and doc["state"] == "unavailable" and doc["queued"] == 3
        assert doc["url"] == gc.url and doc["chain"] == gc.chain_id.hex()
        restart_chain(gc, fog.clock)
        fog.step()
        assert registry.depth() == 0
        assert chain_heights(gc, me) == fog.heights()  # nothing lost, nothing twice
        assert chain_statements(gc, me) == fog.statements()
        (doc,) = json.loads(api.handle("/healthz")[2])["registry_chains"]
        assert doc["state"] == "ok" and doc["anchored_height"] == fog.heights()[-1]
    finally:
        api.stop()


class Hang:
    """A TCP server that takes connections and never answers: a chain that hangs."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_a_hanging_registry_chain_does_not_hold_up_the_dispatch_chain(world: Any) -> None:
    fog, dispatch, _ = world
    hang = Hang()
    main = fog.links.main
    # a request to the hanging chain outlasts the test: were the dispatch link held up by
    # it, its anchors would never come (no wall-clock margin to lose on a loaded machine)
    stuck = ChainLink(fog.node, ChainClient(hang.url, timeout_s=3600.0), fog.clock,
                      outbox=registry_outbox(hang.url), instructions=False,
                      label=f"registry chain {hang.url}")
    links = ChainLinks(main, [stuck])
    links.start(poll_s=0.02)
    try:
        for _ in range(2):
            fog.close_interval()
            wait(lambda: main.anchored_height() == fog.heights()[-1], timeout=120,
                 what="the dispatch chain's anchor while the registry chain hangs")
        assert chain_heights(dispatch, fog.node.key.id) == fog.heights()
        assert stuck.depth() == 0  # no first contact: it knows neither nonce nor head
        assert stuck.status()["state"] in ("connecting", "unavailable")
    finally:
        hang.close()  # its held connections close: the hung request fails now
        links.stop(last_round_s=10)
        stuck.close()  # main is closed by the fixture's links
    assert stuck.counters["chain_unavailable"] >= 1


def test_a_restarted_fog_resumes_both_outboxes(world: Any) -> None:
    fog, dispatch, gc = world
    me = fog.node.key.id
    fog.close_interval()
    fog.step()
    dispatch.api.stop()
    gc.api.stop()
    fog.close_interval()
    fog.close_interval()
    fog.step()
    assert [link.depth() for link in fog.links.links] == [1, 1]
    fog.links.stop(last_round_s=10)  # as the runner stops: the chains are away still
    fog.close()
    restart_chain(dispatch, fog.clock)
    restart_chain(gc, fog.clock)
    fog.node, fog.links = fog.open()
    fog.close_interval()
    fog.step()
    assert [link.depth() for link in fog.links.links] == [0, 0]
    for chain in (dispatch, gc):
        assert chain_heights(chain, me) == fog.heights()
        assert chain_statements(chain, me) == fog.statements()
        nonces = [f[2] for f in anchor_txs(chain, me)]
        assert nonces == list(range(1, len(nonces) + 1))


def test_without_registry_chains_only_chain_db_is_made(tmp_path: Path) -> None:
    d = tmp_path / "fog"
    init_data_dir(d)
    node = FogNode(FogConfig(data_dir=d, chain_url="http://127.0.0.1:9"), Clock())
    links = ChainLinks.configured(node, Clock())
    try:
        assert links.registry == [] and links.statuses() == []
        assert sorted(p.name for p in d.glob("chain*.db")) == ["chain.db"]
    finally:
        links.close()
        node.close()


# -- the setting ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value,words", [
    ('["ftp://gc:8090"]', "'ftp://gc:8090' is not an http:// or https:// URL with a host"),
    ('["gc.example:8090"]', "is not an http:// or https:// URL"),
    ('["http://"]', "is not an http:// or https:// URL with a host"),
    ('["http://gc:99999"]', "the port is not a number"),
    ('["http://u:p@gc:8090"]', "takes no user, query or fragment"),
    ('["http://gc:8090", "http://GC:8090/"]', "http://GC:8090 is listed twice"),
    ('["http://gc", "http://gc:80"]', "http://gc:80 is listed twice"),
    ('["http://gc:8090/a_b", "http://gc:8090/a/b"]', "would share the outbox "
                                                     "chain-registry-gc-8090-a_b.db"),
    ('"http://gc:8090,,http://co2:8090"', "an empty URL in the list"),
    ("[1]", "expected a list of chain API URLs"),
    ("5", "expected a list of chain API URLs"),
])
def test_a_bad_registry_chains_setting_is_a_one_line_error(tmp_path: Path, value: str,
                                                           words: str) -> None:
    path = tmp_path / "fog.toml"
    path.write_text(f"[fog]\nregistry_chains = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert "registry_chains: " in str(e.value) and words in str(e.value)
    assert "\n" not in str(e.value)


def test_a_registry_chain_that_is_the_dispatch_chain_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fog.toml"
    path.write_text('[fog]\nchain_url = "127.0.0.1:8090"\n'
                    'registry_chains = ["https://gc:8090", "http://127.0.0.1:8090/"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert str(e.value) == ("registry_chains: http://127.0.0.1:8090 is chain_url, the dispatch "
                            "chain (anchored to through chain.db already)")


def test_good_registry_chains_settings_and_their_outboxes(tmp_path: Path) -> None:
    path = tmp_path / "fog.toml"
    path.write_text('[fog]\nchain_url = "http://dispatch:8090"\nregistry_chains = '
                    '["https://GC.example:8443/", "http://co2.example", "http://[::1]:8091",'
                    ' "https://proxy/chains/gc"]\n')
    urls = load_config(path, {}).registry_chains
    assert urls == ["https://GC.example:8443", "http://co2.example", "http://[::1]:8091",
                    "https://proxy/chains/gc"]
    assert [registry_outbox(u) for u in urls] == [
        "chain-registry-gc.example-8443.db", "chain-registry-co2.example-80.db",
        "chain-registry-__1-8091.db", "chain-registry-proxy-443-chains_gc.db"]
    assert load_config(None, {}).registry_chains == []
    assert parse_chain_urls("") == []
    assert parse_chain_urls(" http://a:1 , http://b:2/ ") == ["http://a:1", "http://b:2"]


def test_the_flag_takes_a_comma_list_and_refuses_in_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             ) -> None:
    with pytest.raises(SystemExit) as e:
        fog_main.main(["run", "--data-dir", str(tmp_path), "--registry-chains",
                       "http://gc:8090,ftp://co2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--registry-chains" in err and "'ftp://co2' is not an http:// or https:// URL" in err
    code = fog_main.main(["run", "--data-dir", str(tmp_path), "--chain-url", "http://gc:8090",
                          "--registry-chains", "http://co2:8090,http://gc:8090"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: registry_chains: http://gc:8090 is chain_url, the dispatch chain (anchored "
        "to through chain.db already)")
