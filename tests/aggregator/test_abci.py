"""The consortium's ABCI 2.0 application in-process: a real ABCIServer on a Unix socket,
spoken to as CometBFT does (uvarint-framed `tendermint.abci.Request`s, each followed by a
Flush, from the generated protobuf types), over real SQLite stores. No CometBFT runs here:
tests/aggregator/test_consortium.py has the real networks."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.chain.app.state import ZERO_ROOT, Effect, MemoryState, block_state_root
from aggregator.chain.app.validator import Validator
from aggregator.chain.backends.cometbft import engine
from aggregator.chain.backends.cometbft.abci import MAX_MESSAGE, ABCIServer
from aggregator.chain.backends.cometbft.app import MAX_TX, BlockRecord, ChainApp
from aggregator.chain.ledger import ChainError, Receipt
from aggregator.chain.store import SQLiteBlockStore
from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire.cometbft import genesis_app_state

T = engine.pb("tendermint.abci.types_pb2")
TYPES = engine.pb("tendermint.types.types_pb2")
T0 = 1_800_000_000
CHAIN_NAME = "meterledger-test"
ACCEPT, REJECT = T.ResponseProcessProposal.ACCEPT, T.ResponseProcessProposal.REJECT


# --- the chain's transactions ------------------------------------------------------------------
@dataclass
class Keys:
    """The dispatch key (the chain id) and its genesis transaction."""

    dispatch: P.SigningKey
    genesis: bytes

    @classmethod
    def new(cls, dispatch: P.SigningKey | None = None) -> Keys:
        k = dispatch or P.SigningKey.generate()
        return cls(k, P.sign1(k, C.tx(k.id, 1, C.REGISTER, C.register_body(
            "dispatch", k.public_key.raw, "dispatch center"), T0, k.id)))

    @property
    def chain(self) -> bytes:
        return self.dispatch.id

    def register(self, nonce: int, who: P.SigningKey | None = None, role: str = "fog",
                 chain: bytes | None = None) -> bytes:
        who = who or P.SigningKey.generate()
        return P.sign1(self.dispatch, C.tx(self.chain, nonce, C.REGISTER, C.register_body(
            role, who.public_key.raw, f"{role}-{nonce}"), T0, chain or self.chain))

    def fault(self, fog: P.SigningKey, nonce: int) -> bytes:
        return P.sign1(fog, C.tx(fog.id, nonce, C.FAULT, C.fault_body(
            "k", f"f{nonce}", T0, "a"), T0, self.chain))

    def genesis_root(self) -> bytes:
        return block_state_root(ZERO_ROOT, 0, [Validator(self.chain).check_genesis(
            self.genesis)])


def init_chain_req(genesis: bytes, chain_name: str = CHAIN_NAME) -> Any:
    r = T.RequestInitChain(chain_id=chain_name, initial_height=1,
                           app_state_bytes=json.dumps(genesis_app_state(genesis)).encode())
    r.time.seconds = T0
    return r


def block_hash(height: int) -> bytes:
    return hashlib.sha256(b"cometbft block %d" % height).digest()


def finalize_req(height: int, txs: Sequence[bytes]) -> Any:
    r = T.RequestFinalizeBlock(txs=list(txs), height=height, hash=block_hash(height))
    r.time.seconds, r.time.nanos = T0 + height, 1000 * height
    return r


def expected(chain: bytes, base: SQLiteBlockStore, height: int,
             txs: Sequence[bytes]) -> tuple[list[Effect], list[str], MemoryState]:
    """The effects and reasons ("" for accepted) of `txs` applied one by one with the
    Validator, as verify-chain's replay does, and the state after them."""
    v, state = Validator(chain), MemoryState(base)
    effects: list[Effect] = []
    reasons: list[str] = []
    for raw in txs:
        try:
            e = v.check(raw, state)
        except ChainError as err:
            reasons.append(err.reason)
            continue
        state.apply(e, Receipt(e.digest, height, len(effects)))
        effects.append(e)
        reasons.append("")
    return effects, reasons, state


# --- CometBFT's side of the socket -------------------------------------------------------------
def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def request(kind: str, msg: Any = None) -> Any:
    req = T.Request()
    if msg is None:
        getattr(req, kind).SetInParent()
    else:
        getattr(req, kind).CopyFrom(msg)
    return req


class Conn:
    """One ABCI connection, as CometBFT's socket client holds it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, *reqs: Any) -> None:
        out = b""
        for r in reqs:
            raw = r.SerializeToString()
            out += uvarint(len(raw)) + raw
        self.sock.sendall(out)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:  # closed with our next request unread
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv(self) -> Any:
        """The next Response; None at the end of the stream (the app closed it)."""
        n = shift = i = 0
        while True:
            if not self._fill(i + 1):
                return None
            b = self.buf[i]
            n |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
        if not self._fill(i + n):
            return None
        resp = T.Response()
        resp.ParseFromString(self.buf[i:i + n])
        self.buf = self.buf[i + n:]
        return resp

    def call(self, kind: str, msg: Any = None) -> Any:
        """Send one request and a Flush; the typed answer (the Flush's answer read too)."""
        self.send(request(kind, msg), request("flush"))
        resp = self.recv()
        assert resp is not None, f"the app closed the connection on {kind}"
        assert resp.WhichOneof("value") == kind, resp
        flushed = self.recv()
        assert flushed is not None and flushed.WhichOneof("value") == "flush"
        return getattr(resp, kind)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Node:
    """One validator's application: its store, app, server, and a connection to it."""

    db: Path
    sock: Path
    store: SQLiteBlockStore
    app: ChainApp
    server: ABCIServer
    conn: Conn

    def connect(self) -> Conn:
        return Conn(self.sock)

    def init(self, keys: Keys) -> Any:
        return self.conn.call("init_chain", init_chain_req(keys.genesis))

    def finalize(self, height: int, txs: Sequence[bytes]) -> Any:
        return self.conn.call("finalize_block", finalize_req(height, txs))

    def commit(self) -> Any:
        return self.conn.call("commit")

    def block(self, height: int, txs: Sequence[bytes]) -> Any:
        """FinalizeBlock then Commit; the FinalizeBlock answer."""
        r = self.finalize(height, txs)
        self.commit()
        return r

    def check(self, raw: bytes, recheck: bool = False) -> Any:
        return self.conn.call("check_tx", T.RequestCheckTx(
            tx=raw, type=T.CheckTxType.RECHECK if recheck else T.CheckTxType.NEW))

    def info(self) -> Any:
        return self.conn.call("info", T.RequestInfo())

    def query(self, path: str, data: bytes = b"") -> Any:
        return self.conn.call("query", T.RequestQuery(path=path, data=data))

    def stop(self) -> None:
        self.conn.close()
        self.server.stop()
        self.store.close()


@contextmanager
def node_at(db: Path) -> Iterator[Node]:
    """A ChainApp over the SQLite file `db`, served on a socket in a short /tmp folder."""
    folder = Path(tempfile.mkdtemp(prefix="ml-"))
    store = SQLiteBlockStore(db)
    n: Node | None = None
    try:
        app = ChainApp(store)
        server = ABCIServer(folder / "app.sock", app.handle)
        server.start()
        n = Node(db, folder / "app.sock", store, app, server, Conn(folder / "app.sock"))
        yield n
    finally:
        if n is not None:
            n.stop()
        else:
            store.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with node_at(tmp_path / "chain.db") as n:
        yield n


@pytest.fixture
def keys() -> Keys:
    return Keys.new()


def dump(db: Path) -> list[str]:
    c = sqlite3.connect(db)
    try:
        return list(c.iterdump())
    finally:
        c.close()


# --- the socket ------------------------------------------------------------------------------
def test_echo_and_flush_are_answered_in_order_on_a_pipelined_connection(node: Node) -> None:
    long = "x" * 300  # a two-byte length prefix
    node.conn.send(request("echo", T.RequestEcho(message="a")), request("flush"),
                   request("echo", T.RequestEcho(message=long)),
                   request("info", T.RequestInfo()), request("flush"),
                   request("echo", T.RequestEcho(message="")), request("flush"))
    answers = [node.conn.recv() for _ in range(7)]
    assert None not in answers
    assert [a.WhichOneof("value") for a in answers] == [
        "echo", "flush", "echo", "info", "flush", "echo", "flush"]
    assert [answers[i].echo.message for i in (0, 2, 5)] == ["a", long, ""]
    # a second connection (CometBFT opens four) is served beside the first
    other = node.connect()
    try:
        assert other.call("echo", T.RequestEcho(message="b")).message == "b"
        assert node.conn.call("echo", T.RequestEcho(message="c")).message == "c"
    finally:
        other.close()


def test_a_request_with_no_value_is_an_exception_and_closes_only_that_connection(
        node: Node) -> None:
    bad = node.connect()
    bad.send(T.Request())
    resp = bad.recv()
    assert resp is not None and resp.WhichOneof("value") == "exception"
    assert bad.recv() is None  # closed
    bad.close()
    assert node.info().last_block_height == 0  # the others go on


def test_a_frame_over_the_limit_is_an_exception_before_it_is_read(node: Node) -> None:
    bad = node.connect()
    bad.sock.sendall(uvarint(MAX_MESSAGE + 1))
    resp = bad.recv()
    assert resp is not None and "over the" in resp.exception.error
    assert bad.recv() is None
    bad.close()


def test_the_server_replaces_a_stale_socket_and_stop_ends_its_threads(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ml-"))
    try:
        path = folder / "app.sock"
        path.write_text("left by a killed process")
        server = ABCIServer(path, lambda kind, req, conn: None)
        server.start()
        accepting = server._thread
        conn = Conn(path)
        assert conn.call("echo", T.RequestEcho(message="up")).message == "up"
        server.stop()
        assert accepting is not None and not accepting.is_alive()  # not left in accept()
        assert conn.recv() is None  # its connections are closed
        assert not path.exists()
        conn.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- info and genesis ----------------------------------------------------------------------------
def test_info_on_a_fresh_app_then_after_genesis_and_blocks(node: Node, keys: Keys) -> None:
    info = node.info()
    assert (info.last_block_height, info.last_block_app_hash) == (0, b"")
    assert info.version == engine.VERSION and info.data == "meterledger"
    assert node.init(keys).app_hash == keys.genesis_root()
    info = node.info()
    assert (info.last_block_height, info.last_block_app_hash) == (0, keys.genesis_root())
    node.block(1, [keys.register(2)])
    r2 = node.block(2, [keys.register(3)])
    info = node.info()
    assert (info.last_block_height, info.last_block_app_hash) == (2, r2.app_hash)
    assert r2.app_hash == node.store.state_root(2) != keys.genesis_root()


def test_init_chain_again_is_idempotent_and_another_genesis_is_refused(
        node: Node, keys: Keys) -> None:
    first = node.init(keys).app_hash
    before = dump(node.db)
    assert node.init(keys).app_hash == first  # CometBFT calls it again until block 1
    assert dump(node.db) == before
    other = Keys.new()
    node.conn.send(request("init_chain", init_chain_req(other.genesis)), request("flush"))
    resp = node.conn.recv()
    assert resp is not None and resp.WhichOneof("value") == "exception"
    assert "another chain's genesis" in resp.exception.error
    assert node.conn.recv() is None  # the app closed that connection
    node.conn = node.connect()
    assert node.info().last_block_app_hash == first
    assert node.app.chain_id == keys.chain and dump(node.db) == before


def test_init_chain_refuses_a_bad_app_state(node: Node, keys: Keys) -> None:
    bad = T.RequestInitChain(chain_id=CHAIN_NAME, app_state_bytes=b'{"meterledger": {}}')
    node.conn.send(request("init_chain", bad), request("flush"))
    resp = node.conn.recv()
    assert resp is not None and "genesis_tx" in resp.exception.error
    node.conn = node.connect()
    late = init_chain_req(keys.genesis)
    late.initial_height = 5
    node.conn.send(request("init_chain", late), request("flush"))
    resp = node.conn.recv()
    assert resp is not None and "not 5" in resp.exception.error
    assert node.store.height() == -1


# --- the mempool ---------------------------------------------------------------------------------
def test_check_tx_against_the_mempool_view_and_recheck_after_commit(
        node: Node, keys: Keys) -> None:
    node.init(keys)
    n2, n3, n4 = keys.register(2), keys.register(3), keys.register(4)
    assert node.check(n2).code == 0
    again = node.check(keys.register(2))  # another transaction with the same nonce
    assert (again.code, again.data, again.codespace) == (1, b"nonce_reused", "meterledger")
    assert again.log.startswith("nonce_reused: ")
    assert node.check(n3).code == 0 and node.check(n4).code == 0  # n+1, n+2 on the view
    gap = node.check(keys.register(6))
    assert (gap.code, gap.data) == (1, b"nonce_gap")
    assert node.check(b"junk").data == b"malformed"
    assert node.check(b"\xa0" * (MAX_TX + 1)).data == b"too_large"
    assert node.store.height() == 0  # CheckTx writes nothing
    # block 1 commits n2; CometBFT rechecks what its mempool still holds, in order
    node.block(1, [n2])
    assert node.check(n3, recheck=True).code == 0
    assert node.check(n4, recheck=True).code == 0
    node.block(2, [n3])
    dup = node.check(n3, recheck=True)  # committed meanwhile
    assert (dup.code, dup.data) == (1, b"duplicate")
    assert node.check(n4, recheck=True).code == 0  # the view restarted from block 2


def test_check_tx_before_genesis_is_unavailable(node: Node, keys: Keys) -> None:
    r = node.check(keys.register(2))
    assert (r.code, r.data) == (1, b"unavailable")


# --- proposals -----------------------------------------------------------------------------------
def test_prepare_proposal_drops_refused_and_oversized_txs_and_keeps_order(
        node: Node, keys: Keys) -> None:
    node.init(keys)
    n2, n3, n4 = keys.register(2), keys.register(3), keys.register(4)
    node.block(1, [n2])
    n5 = keys.register(5)
    txs = [n3, n2, keys.register(3), b"junk", n4, n5]  # n2 committed, the 2nd n3 reused
    r = node.conn.call("prepare_proposal", T.RequestPrepareProposal(
        txs=txs, max_tx_bytes=10**6, height=2))
    assert list(r.txs) == [n3, n4, n5]
    # max_tx_bytes counts as CometBFT does: the txs' size in its Data protobuf
    fits = TYPES.Data(txs=[n3, n4]).ByteSize()
    assert fits > len(n3) + len(n4)
    for limit in (fits, fits - 1, len(n3) + len(n4)):
        r = node.conn.call("prepare_proposal", T.RequestPrepareProposal(
            txs=txs, max_tx_bytes=limit, height=2))
        kept = list(r.txs)
        assert kept == ([n3, n4] if limit >= fits else [n3]), limit
        assert TYPES.Data(txs=kept).ByteSize() <= limit  # CometBFT's Txs.Validate


def test_process_proposal_rejects_a_block_with_a_refused_tx(node: Node, keys: Keys) -> None:
    node.init(keys)
    n2, n3 = keys.register(2), keys.register(3)

    def process(txs: list[bytes]) -> int:
        status: int = node.conn.call("process_proposal", T.RequestProcessProposal(
            txs=txs, height=1, hash=block_hash(1))).status
        return status

    assert process([n2, n3]) == ACCEPT
    assert process([]) == ACCEPT
    assert process([n3, n2]) == REJECT  # nonce gap first
    assert process([n2, n3, keys.register(3)]) == REJECT
    assert process([n2, n2]) == REJECT
    assert process([keys.register(2, chain=b"\x01" * 8)]) == REJECT
    assert node.store.height() == 0


# --- blocks --------------------------------------------------------------------------------------
def test_finalize_block_one_result_per_tx_and_the_app_hash_of_the_accepted(
        node: Node, keys: Keys) -> None:
    node.init(keys)
    n2, n3 = keys.register(2), keys.register(3)
    txs = [n2, keys.register(2), n3, n2, b"junk"]
    effects, reasons, _ = expected(keys.chain, node.store, 1, txs)
    assert reasons == ["", "nonce_reused", "", "duplicate", "malformed"]
    r = node.finalize(1, txs)
    assert [(x.code, x.data.decode()) for x in r.tx_results] == [
        (0 if not why else 1, why) for why in reasons]
    assert all(x.codespace == "meterledger" for x in r.tx_results if x.code)
    assert r.app_hash == block_state_root(keys.genesis_root(), 1, effects)
    assert node.store.height() == 0  # nothing written before Commit
    node.commit()
    b = node.store.block(1)
    assert b is not None and b.txs == (n2, n3) and b.hash == block_hash(1)
    record = BlockRecord.decode(b.header)
    assert (record.height, record.ntx, record.chain, record.hash) == (1, 2, keys.chain,
                                                                    block_hash(1))
    assert (record.time_s, record.time_ns) == (T0 + 1, 1000)
    assert node.store.state_root(1) == r.app_hash
    # a submitter waiting on a refused transaction learns why
    out = node.app.outcome(P.digest(keys.register(2)))
    assert out is None  # another signature: another transaction, in no block
    junk = node.app.outcome(P.digest(b"junk"))
    assert junk is not None and junk.receipt is None and junk.reason == "malformed"
    ok = node.app.outcome(P.digest(n3))
    assert ok is not None and ok.receipt == Receipt(P.digest(n3), 1, 1)


def test_an_empty_block_keeps_the_app_hash(node: Node, keys: Keys) -> None:
    node.init(keys)
    r1 = node.block(1, [keys.register(2)])
    for h in (2, 3):
        assert node.block(h, []).app_hash == r1.app_hash
    assert node.block(4, [keys.register(2)]).app_hash == r1.app_hash  # all refused
    assert node.info().last_block_height == 4
    assert node.store.block(4) is not None and node.store.block(4).txs == ()  # type: ignore[union-attr]


def test_finalize_block_at_the_wrong_height_is_an_exception(node: Node, keys: Keys) -> None:
    node.init(keys)
    node.conn.send(request("finalize_block", finalize_req(2, [])), request("flush"))
    resp = node.conn.recv()
    assert resp is not None and "next block is 1" in resp.exception.error
    node.conn = node.connect()
    node.conn.send(request("commit"), request("flush"))  # Commit with nothing finalized
    resp = node.conn.recv()
    assert resp is not None and resp.WhichOneof("value") == "exception"


def _blocks(keys: Keys) -> list[list[bytes]]:
    fog = P.SigningKey.generate()
    return [[keys.register(2, fog), keys.register(3)], [], [keys.fault(fog, 1), b"junk"],
            [keys.fault(fog, 2), keys.register(4), keys.fault(fog, 2)]]


def test_two_apps_fed_the_same_blocks_hold_byte_identical_state(
        tmp_path: Path, keys: Keys) -> None:
    blocks = _blocks(keys)
    hashes: list[list[bytes]] = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        with node_at(tmp_path / name / "chain.db") as n:
            mine = [n.init(keys).app_hash]
            for h, txs in enumerate(blocks, 1):
                r = n.block(h, txs)
                mine.append(r.app_hash)
            hashes.append(mine)
    assert hashes[0] == hashes[1] and len(set(hashes[0])) == 4  # block 2 is empty
    assert dump(tmp_path / "a" / "chain.db") == dump(tmp_path / "b" / "chain.db")


def test_a_crash_between_finalize_block_and_commit_replays_to_the_same_hash(
        tmp_path: Path, keys: Keys) -> None:
    db = tmp_path / "chain.db"
    with node_at(db) as n:
        n.init(keys)
        r1 = n.block(1, [keys.register(2)])
        txs = [keys.register(3), keys.register(4)]
        r2 = n.finalize(2, txs)
        # killed here: CometBFT saved block 2, the app never saw Commit
    with node_at(db) as n:
        info = n.info()
        assert (info.last_block_height, info.last_block_app_hash) == (1, r1.app_hash)
        assert n.app.chain_id == keys.chain
        assert n.block(2, txs).app_hash == r2.app_hash  # CometBFT replays block 2
        assert n.store.state_root(2) == r2.app_hash
        assert n.block(3, [keys.register(5)]).tx_results[0].code == 0  # the nonces go on


def test_query_head_and_tx(node: Node, keys: Keys) -> None:
    head = node.query("/head")
    assert (head.code, head.height) == (0, 0)
    assert json.loads(head.value) == {"height": -1, "state_root": ZERO_ROOT.hex(), "chain": ""}
    node.init(keys)
    n2 = keys.register(2)
    r = node.block(1, [n2])
    head = node.query("/head")
    assert head.code == 0 and head.height == 1
    assert json.loads(head.value) == {"height": 1, "state_root": r.app_hash.hex(),
                                      "chain": keys.chain.hex()}
    tx = node.query("/tx", P.digest(n2))
    assert tx.code == 0
    assert json.loads(tx.value) == {"digest": P.digest(n2).hex(), "height": 1, "index": 0}
    missing = node.query("/tx", b"\x00" * 32)
    assert (missing.code, missing.log) == (1, "no such transaction")
    assert node.query("/nope").code == 1


# --- the rules, in any order -------------------------------------------------------------------
_KEYS = Keys.new()
_FOG, _REG = P.SigningKey.generate(), P.SigningKey.generate()
_POOL = [
    _KEYS.register(2, _FOG), _KEYS.register(3, _REG, role="regulator"), _KEYS.register(4),
    _KEYS.register(2), _KEYS.register(3, chain=b"\x02" * 8), _KEYS.fault(_FOG, 1),
    _KEYS.fault(_FOG, 2), _KEYS.fault(_FOG, 3), _KEYS.fault(_REG, 1), _KEYS.genesis,
    b"\x00junk",
]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(range(len(_POOL))), max_size=12))
def test_a_block_in_any_order_accepts_what_the_validator_accepts_one_by_one(
        order: list[int]) -> None:
    txs = [_POOL[i] for i in order]
    folder = Path(tempfile.mkdtemp(prefix="ml-h-"))
    try:
        with node_at(folder / "chain.db") as n:
            n.init(_KEYS)
            effects, reasons, state = expected(_KEYS.chain, n.store, 1, txs)
            accepted = [raw for raw, why in zip(txs, reasons, strict=True) if not why]
            process = n.conn.call("process_proposal", T.RequestProcessProposal(
                txs=txs, height=1)).status
            assert process == (ACCEPT if len(accepted) == len(txs) else REJECT)
            prepared = n.conn.call("prepare_proposal", T.RequestPrepareProposal(
                txs=txs, max_tx_bytes=10**6, height=1)).txs
            assert list(prepared) == accepted
            r = n.block(1, txs)
            assert [x.data.decode() for x in r.tx_results] == reasons
            assert [x.code for x in r.tx_results] == [1 if why else 0 for why in reasons]
            assert r.app_hash == block_state_root(_KEYS.genesis_root(), 1, effects)
            b = n.store.block(1)
            assert b is not None and b.txs == tuple(accepted)
            for p in n.store.participants():  # the derived state is the replayed one
                assert state.participant(p.id) == p
            assert {p.id for p in n.store.participants()} == {
                _KEYS.chain, *state.participants}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
