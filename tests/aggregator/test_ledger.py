"""The embedded ledger over both stores: every transaction rule, group sealing (a block holds
everything validated while the previous one was written, and validation sees that pool),
duplicates while pending, a failed write, close, and proofs of inclusion in txroot."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.backends.embedded import EmbeddedLedger, create_genesis
from aggregator.chain.ledger import (
    AggregatorError,
    ChainError,
    DuplicateError,
    NotFoundError,
    Receipt,
    StorageError,
    UnavailableError,
)
from aggregator.chain.store import BlockStore, MemoryBlockStore, SQLiteBlockStore
from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire import merkle
from tests.kit.chainkit import T0, FogSide, aggregate_fields

DISPATCH = P.SigningKey.from_int(0xD15)


class Party:
    """A participant's key and the nonces it has used."""

    def __init__(self, key: P.SigningKey, nonce: int = 0, chain: bytes = DISPATCH.id) -> None:
        self.key, self.nonce, self.chain = key, nonce, chain

    @property
    def id(self) -> bytes:
        return self.key.id

    def tx(self, kind: str, body: dict[int, Any], nonce: int | None = None,
           chain: bytes | None = None) -> bytes:
        if nonce is None:
            self.nonce += 1
            nonce = self.nonce
        return P.sign1(self.key, C.tx(self.key.id, nonce, kind, body, T0, chain or self.chain))


class GateStore:
    """A BlockStore whose append waits for `gate` (a seal held in progress) and can fail."""

    def __init__(self, inner: BlockStore) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.fail_next: Exception | None = None

    def hold(self) -> None:
        """From now on, append waits until gate.set(); entered counts appends begun."""
        self.entered = threading.Semaphore(0)
        self.gate.clear()

    def append(self, height: int, header: bytes, effects: Any, state_root: bytes,
               block_hash: bytes | None = None) -> None:
        self.entered.release()
        assert self.gate.wait(60)
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        self.inner.append(height, header, effects, state_root, block_hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GateStore]:
    inner: BlockStore = (MemoryBlockStore() if request.param == "memory"
                         else SQLiteBlockStore(tmp_path / "chain.db"))
    create_genesis(inner, DISPATCH, T0)
    yield GateStore(inner)
    inner.close()


class World:
    def __init__(self, store: GateStore, tmp_path: Path) -> None:
        self.store = store
        self.ledger = EmbeddedLedger(store, DISPATCH, lambda: T0 + 60)
        self.dispatch = Party(DISPATCH, nonce=1)
        self.fogside = FogSide(tmp_path)
        self.fog = self.register("fog", self.fogside.key)
        self.fog2 = self.register("fog")
        self.regulator = self.register("regulator")

    def register(self, role: str, key: P.SigningKey | None = None) -> Party:
        key = key or P.SigningKey.generate()
        self.ledger.submit(self.dispatch.tx("register", C.register_body(role, key.public_key.raw)))
        return Party(key)

    def refused(self, raw: bytes, reason: str, fragment: str | None = None) -> ChainError:
        with pytest.raises(ChainError, match=fragment) as e:
            self.ledger.submit(raw)
        assert e.value.reason == reason, e.value
        return e.value


@pytest.fixture
def world(store: GateStore, tmp_path: Path) -> Iterator[World]:
    w = World(store, tmp_path)
    yield w
    w.ledger.close()
    w.fogside.close()


def fault() -> dict[int, Any]:
    return C.fault_body("meter", "no answer", T0, "retry")


def test_registrations_and_receipts(world: World) -> None:
    ledger = world.ledger
    assert ledger.head().height == 3 and ledger.chain_id == DISPATCH.id
    assert [(p.role, p.nonce) for p in ledger.participants()] == [
        ("dispatch", 4), ("fog", 0), ("fog", 0), ("regulator", 0)]
    r = ledger.submit(world.fog.tx("fault", fault()))
    assert r.height == 4 and r.index == 0
    assert ledger.participant(world.fog.id).nonce == 1  # type: ignore[union-attr]
    view = ledger.tx(r.digest)
    header = P.verify(view.header, DISPATCH.public_key).fields
    merkle.verify_inclusion(merkle.leaf_hash(view.tx), view.index, header[5], view.path,
                            header[4])
    assert header[2] == 4 and header[3] == ledger.block(3).hash and header[6] == T0 + 60
    assert ledger.block(4).txs == (view.tx,)
    s = ledger.stats()
    assert s.accepted == {"register": 3, "fault": 1} and s.blocks_sealed == 4
    with pytest.raises(NotFoundError):
        ledger.block(5)
    with pytest.raises(NotFoundError):
        ledger.tx(b"\x00" * 32)


def test_duplicate_returns_the_existing_receipt(world: World) -> None:
    raw = world.fog.tx("fault", fault())
    first = world.ledger.submit(raw)
    with pytest.raises(DuplicateError) as e:
        world.ledger.submit(raw)
    assert e.value.reason == "duplicate" and e.value.receipt == first
    assert world.ledger.head().height == first.height  # nothing new was sealed


def test_nonce_rules(world: World) -> None:
    fog = world.fog
    world.ledger.submit(fog.tx("fault", fault()))
    world.refused(fog.tx("fault", C.fault_body("other", "x", T0, "y"), nonce=1),
                  "nonce_reused", "not above its last used nonce 1")
    world.refused(fog.tx("fault", fault(), nonce=3), "nonce_gap", "the next one is 2")
    world.ledger.submit(fog.tx("fault", fault(), nonce=2))  # the refusals used up nothing
    assert world.ledger.participant(fog.id).nonce == 2  # type: ignore[union-attr]


def test_unregistered_wrong_chain_and_wrong_type(world: World) -> None:
    stranger = Party(P.SigningKey.generate())
    world.refused(stranger.tx("fault", fault()), "unregistered", stranger.id.hex())
    world.refused(world.fog.tx("fault", fault(), chain=b"\x05" * 8), "wrong_chain",
                  "0505050505050505")
    cp = world.fogside.grow(1)
    world.refused(cp.msg, "wrong_type", "type 6")
    world.refused(b"\xd2\x84", "malformed")
    world.refused(bytes(4097), "too_large")


def test_signature_must_be_the_registered_key(world: World) -> None:
    forger = P.SigningKey.generate()
    fields = C.tx(world.fog.id, 1, "fault", fault(), T0, DISPATCH.id)
    raw = P.sign1(forger, fields, check=False).replace(forger.id, world.fog.id, 1)
    world.refused(raw, "bad_signature")


@pytest.mark.parametrize("who,kind", [
    ("fog", "register"), ("fog", "instruction"), ("dispatch", "anchor"), ("dispatch", "fault"),
    ("regulator", "register"), ("regulator", "fault"), ("regulator", "instruction"),
])
def test_roles_not_permitted(world: World, who: str, kind: str) -> None:
    party = {"fog": world.fog, "dispatch": world.dispatch, "regulator": world.regulator}[who]
    body = {
        "register": C.register_body("fog", P.SigningKey.generate().public_key.raw),
        "instruction": C.instruction_body(world.fog.id, "ping", {}, T0),
        "anchor": C.anchor_body([b"x"], []),
        "fault": fault(),
    }[kind]
    world.refused(party.tx(kind, body), "not_permitted", f"a {kind} must come from")


def test_reports_need_their_instruction_and_its_fog(world: World) -> None:
    instr = world.dispatch.tx("instruction", C.instruction_body(world.fog.id, "relay",
                                                                {1: False}, T0 + 900))
    world.refused(world.fog.tx("report", C.report_body(P.digest(instr), 1, 0, 0, [])),
                  "unknown_instruction")
    world.fog.nonce -= 1  # refused: the nonce is still free
    world.ledger.submit(instr)
    world.refused(world.fog2.tx("report", C.report_body(P.digest(instr), 1, 0, 0, [])),
                  "not_permitted", "names fog")
    world.refused(world.dispatch.tx("report", C.report_body(P.digest(instr), 1, 0, 0, [])),
                  "not_permitted")
    r = world.ledger.submit(world.fog.tx("report", C.report_body(P.digest(instr), 1, 0, 0, [3])))
    assert world.ledger.tx(r.digest).tx
    assert [i.digest for i in world.ledger.instructions(world.fog.id)] == [P.digest(instr)]
    assert world.ledger.instructions(world.fog2.id) == []


def test_instructions_must_name_a_registered_fog(world: World) -> None:
    for target in (world.regulator.id, b"\x03" * 8):
        world.refused(world.dispatch.tx("instruction", C.instruction_body(target, "ping", {}, T0)),
                      "unknown_fog")
        world.dispatch.nonce -= 1


def test_already_registered(world: World) -> None:
    world.refused(world.dispatch.tx("register", C.register_body(
        "plant", world.fog.key.public_key.raw)), "already_registered")
    world.dispatch.nonce -= 1
    world.refused(world.dispatch.tx("register", C.register_body(
        "dispatch", DISPATCH.public_key.raw)), "already_registered")


def test_anchors_follow_the_fog_s_side_chain(world: World) -> None:
    fs, fog = world.fogside, world.fog
    fs.grow(4)
    r1 = world.ledger.submit(fog.tx("anchor", fs.anchor()))
    fs.grow(2)
    fs.grow(3)
    r2 = world.ledger.submit(fog.tx("anchor", fs.anchor()))
    assert [(a.digest, a.first, a.last, a.size) for a in world.ledger.anchors(fog.id)] == [
        (r1.digest, 1, 1, 4), (r2.digest, 2, 3, 9)]
    assert world.ledger.stats().anchors == 2
    # the fog rewrites its anchored history: same size, another root
    latest = fs.checkpoints.latest()
    assert latest is not None
    forged = P.sign1(fs.key, P.checkpoint(fs.key.id, 4, 9, b"\x0f" * 32, latest.digest, T0))
    world.refused(fog.tx("anchor", C.anchor_body([forged], [])), "anchor_consistency")
    fog.nonce -= 1
    world.refused(fog.tx("anchor", C.anchor_body([latest.msg], [])), "anchor_height")
    fog.nonce -= 1
    # another fog's checkpoints
    world.refused(world.fog2.tx("anchor", C.anchor_body([latest.msg], [])), "anchor_wrong_fog")


def test_anchor_values_beyond_int64_are_refused(world: World) -> None:
    fs = world.fogside
    fs.log.append_batch([b"e"])
    huge = P.sign1(fs.key, P.checkpoint(fs.key.id, 1, 1, fs.log.root(), P.ZERO32, 2**64 - 1),
                   check=False)
    world.refused(world.fog.tx("anchor", C.anchor_body([huge], [])), "anchor_bad_checkpoint",
                  r"out_of_range: .*2\^63")
    late = P.sign1(fs.key, P.checkpoint(fs.key.id, 1, 1, fs.log.root(), P.ZERO32, 2**32),
                   check=False)
    world.fog.nonce -= 1  # a refused transaction takes no nonce
    world.refused(world.fog.tx("anchor", C.anchor_body([late], [])), "anchor_bad_checkpoint",
                  r"bad_fields: type 6 field 6 \(t\) is 4294967296, outside")


# --- group sealing ------------------------------------------------------------------------------
def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except AggregatorError as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_pending(world: World, n: int) -> None:
    for _ in range(6000):
        if world.ledger.stats().pending == n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"never {n} pending")


def test_a_block_holds_everything_validated_during_the_previous_seal(world: World) -> None:
    store, fog = world.store, world.fog
    store.hold()
    a = fog.tx("fault", fault())
    ta, ra = in_thread(lambda: world.ledger.submit(a))
    assert store.entered.acquire(timeout=60)  # a is being written as block 4
    # b and c continue fog's nonces past a, which is not sealed yet: validated on the pool
    b, c = fog.tx("fault", fault()), fog.tx("fault", fault())
    d = world.fog2.tx("fault", fault())
    threads = []
    for n, raw in enumerate((b, c, d), 1):  # one after the other: the pool's order is fixed
        threads.append(in_thread(functools.partial(world.ledger.submit, raw)))
        wait_pending(world, n)
    world.refused(fog.tx("fault", C.fault_body("x", "y", T0, "z"), nonce=3),
                  "nonce_reused")  # c's nonce, taken by the pending c
    # the same bytes as a pending transaction: answered as a duplicate once it is sealed
    tdup, rdup = in_thread(lambda: world.ledger.submit(b))
    store.gate.set()
    for t, _ in [(ta, ra), *threads, (tdup, rdup)]:
        t.join(60)
    assert ra == [Receipt(P.digest(a), 4, 0)]
    assert [out[0] for _, out in threads] == [Receipt(P.digest(b), 5, 0),
                                              Receipt(P.digest(c), 5, 1),
                                              Receipt(P.digest(d), 5, 2)]
    assert isinstance(rdup[0], DuplicateError) and rdup[0].receipt == Receipt(P.digest(b), 5, 0)
    assert world.ledger.block(5).txs == (b, c, d) and world.ledger.head().height == 5
    assert world.ledger.stats().rejected == {"nonce_reused": 1, "duplicate": 1}


def test_what_arrives_during_a_seal_reads_the_time_of_the_block_being_sealed(
        world: World) -> None:
    # rules read the chain's time (State.chain_time): the time of the block before their
    # own. What arrives while block 4 is written goes into block 5, so it must read block
    # 4's time, as verify-chain will when it replays block 5
    store, fog = world.store, world.fog
    before = world.ledger._overlay.chain_time()
    assert before == P.parse(world.ledger.block(3).header, schema=False).fields[6] < T0 + 500
    world.ledger._clock = lambda: T0 + 500  # block 4 gets a later time than block 3
    store.hold()
    ta, _ = in_thread(lambda: world.ledger.submit(fog.tx("fault", fault())))
    assert store.entered.acquire(timeout=60)
    assert store.chain_time() == before  # block 4 is not stored yet
    assert world.ledger._overlay.chain_time() == T0 + 500  # but what comes now reads its time
    store.gate.set()
    ta.join(60)
    assert P.parse(world.ledger.block(4).header, schema=False).fields[6] == T0 + 500
    assert world.ledger._overlay.chain_time() == store.chain_time() == T0 + 500


def test_a_failed_write_refuses_the_block_and_the_pool(world: World) -> None:
    store, fog = world.store, world.fog
    store.hold()
    store.fail_next = StorageError("disk full")
    a, b = fog.tx("fault", fault()), fog.tx("fault", fault())
    ta, ra = in_thread(lambda: world.ledger.submit(a))
    assert store.entered.acquire(timeout=60)
    tb, rb = in_thread(lambda: world.ledger.submit(b))
    wait_pending(world, 1)
    store.gate.set()
    ta.join(60)
    tb.join(60)
    for out in (ra, rb):
        assert isinstance(out[0], UnavailableError) and "disk full" in str(out[0])
    assert world.ledger.head().height == 3 and world.ledger.stats().pending == 0
    assert world.ledger.participant(fog.id).nonce == 0  # type: ignore[union-attr]
    # the senders retry with the same bytes, which are accepted now
    assert world.ledger.submit(a) == Receipt(P.digest(a), 4, 0)
    assert world.ledger.submit(b) == Receipt(P.digest(b), 5, 0)


def test_close_seals_what_is_pending_then_refuses(world: World) -> None:
    store = world.store
    store.hold()
    a, b = world.fog.tx("fault", fault()), world.fog.tx("fault", fault())
    ta, ra = in_thread(lambda: world.ledger.submit(a))
    assert store.entered.acquire(timeout=60)
    tb, rb = in_thread(lambda: world.ledger.submit(b))
    wait_pending(world, 1)
    tc, _ = in_thread(world.ledger.close)
    store.gate.set()
    for t in (ta, tb, tc):
        t.join(60)
    assert ra == [Receipt(P.digest(a), 4, 0)] and rb == [Receipt(P.digest(b), 5, 0)]
    with pytest.raises(UnavailableError, match="closed"):
        world.ledger.submit(world.fog.tx("fault", fault()))


def test_the_ledger_needs_its_sealer_key_and_a_genesis(tmp_path: Path) -> None:
    s = MemoryBlockStore()
    with pytest.raises(StorageError, match="no genesis"):
        EmbeddedLedger(s, DISPATCH, lambda: T0)
    create_genesis(s, DISPATCH, T0)
    with pytest.raises(AggregatorError, match="is not the sealer of chain"):
        EmbeddedLedger(s, P.SigningKey.generate(), lambda: T0)


def test_block_times_never_go_backwards(store: GateStore) -> None:
    now = [T0 + 100]
    ledger = EmbeddedLedger(store, DISPATCH, lambda: now[0])
    d = Party(DISPATCH, nonce=1)
    ledger.submit(d.tx("register", C.register_body("fog", P.SigningKey.generate().public_key.raw)))
    now[0] = T0 + 50  # the clock steps back
    ledger.submit(d.tx("register", C.register_body("fog", P.SigningKey.generate().public_key.raw)))
    ts = [P.parse(ledger.block(h).header).fields[6] for h in range(3)]
    assert ts == [T0, T0 + 100, T0 + 100]
    ledger.close()


def test_aggregates_and_rule_sets_on_both_stores_and_on_the_pool(world: World) -> None:
    store, fs, fog = world.store, world.fogside, world.fog
    ivl = T0 - T0 % 900
    fs.grow(2)
    first = fs.close_interval(ivl, [{"feeder": "a", "imp": 5}, {"feeder": "b", "imp": 6}])
    a = fog.tx("anchor", fs.anchor())
    second = fs.close_interval(ivl + 900, [{"feeder": "a", "imp": 7}])
    rev = fs.log_aggregates([aggregate_fields(fs.key.id, "a", ivl, 8, rev=1,
                                              replaces=P.digest(first[0]),
                                              prev=P.digest(second[0]))])
    b = fog.tx("anchor", fs.anchor())
    text = ('name = "r"\nversion = 1\n[[rule]]\nid = "a"\nfeeder = "*"\nmetric = "net_kw"\n'
            'above = 1\nop = "limit"\nargs = { max_w = 1 }\n')  # the chain validates it
    rules = world.dispatch.tx("rules", C.rules_body("r", 1, text))
    cite = world.dispatch.tx("instruction", C.instruction_body(
        fog.id, "ping", {}, T0, rule=C.rules_digest(text)))
    store.hold()
    ta, ra = in_thread(lambda: world.ledger.submit(a))
    assert store.entered.acquire(timeout=60)  # a is being written
    # b's revision chains onto a's close, c cites the pending rule set: both on the pool
    threads = []
    for n, raw in enumerate((b, rules, cite), 1):
        threads.append(in_thread(functools.partial(world.ledger.submit, raw)))
        wait_pending(world, n)
    # the dispatch key's next nonce after the pending rules (5) and cite (6)
    world.refused(world.dispatch.tx("rules", C.rules_body("r", 1, text + "#"), nonce=7),
                  "rules_version")
    store.gate.set()
    for t, _ in [(ta, ra), *threads]:
        t.join(60)
    assert ra == [Receipt(P.digest(a), 4, 0)]
    assert [out[0].height for _, out in threads] == [5, 5, 5]
    views = world.ledger.aggregates(fog.id)
    assert [(v.feeder, v.ivl, v.rev, v.height, v.index) for v in views] == [
        ("a", ivl, 0, 4, 0), ("b", ivl, 0, 4, 0), ("a", ivl + 900, 0, 5, 0), ("a", ivl, 1, 5, 0)]
    assert [v.msg for v in views] == first + second + rev
    assert [v.digest for v in world.ledger.aggregates(fog.id, "b")] == [P.digest(first[1])]
    assert len(world.ledger.aggregates(None, None, 4)) == 2
    assert store.aggregate_fog(P.digest(rev[0])) == fog.id
    (r,) = world.ledger.rules()
    assert (r.name, r.version, r.digest, r.text, r.height, r.index) == (
        "r", 1, C.rules_digest(text), text, 5, 1)
    assert store.rules_version("r") == 1 and store.rules_name(r.digest) == "r"
    assert store.rules_version("other") == 0
