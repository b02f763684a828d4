"""verify-chain for a consortium validator: replay its app's blocks from genesis.

A validator's app (aggregator.chain.backends.cometbft.app) stores for every block the app's
`BlockRecord`, a CBOR map, where the embedded chain stores a sealed type-13 header: the
block's header and the validators' signatures on it are CometBFT's (in its own block store;
`tools.audit --validators GENESIS.json` checks a transaction's commit offline). What the app
stored is checked here, block by block, the first failure raising VerifyError:

    missing_block    blocks 0..head, none missing
    bad_record       the record is a CBOR map of the BlockRecord's fields and types
    bad_height       the record's height is the block's
    wrong_chain      the record names the chain id of block 0 (the dispatch key's id)
    bad_block_hash   the stored block hash is the record's: CometBFT's 32-byte block hash
                     (block 0, the genesis, has none: its hash is the record's digest)
    t_backwards      block time (CometBFT's header time) never goes back
    bad_ntx          the record counts the transactions the block holds
    (a tx's reason)  every transaction, by the same Validator, against the replayed state;
                     block 0 is the dispatch key registering itself (the trusted key when
                     one is given: untrusted_sealer otherwise)
    bad_genesis      block 0 is the genesis of the network's genesis.json (its app_state's
                     transaction and its chain id), when that file is given
    state_root       the state root stored with every block is `block_state_root` over the
                     replayed effects: the app hash the validators agreed on

then, on a stopped validator, its derived state (verify.check_derived). Only accepted
transactions are stored (a block's refused ones changed nothing and are in CometBFT's
results only), so every stored transaction must replay.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft.app import BlockRecord
from aggregator.chain.ledger import StorageError
from aggregator.chain.store import BlockStore, StoredBlock
from aggregator.chain.verify import Replay, VerifyError, check_derived, store_blocks
from meterledger import wire as P
from meterledger.wire import cometbft as W

DERIVED = "every state root and the derived state checked"
RUNNING = "every state root checked; derived state not checked: the validator is running"
REMOTE = "the head's state root checked (the API serves no other)"
_RECORD_TYPES = (("chain", bytes), ("height", int), ("hash", bytes), ("ntx", int),
                 ("time_s", int), ("time_ns", int), ("chain_name", str))


@dataclass(frozen=True)
class Genesis:
    """What a network's genesis.json says of the chain: CometBFT's chain id and the
    chain's first transaction (app_state)."""

    chain_name: str
    tx: bytes


def read_genesis(path: Path) -> Genesis:
    """The chain id and genesis transaction of CometBFT's genesis.json at `path`;
    StorageError when it cannot be read."""
    try:
        g = json.loads(path.read_text())
        return Genesis(str(g["chain_id"]), W.genesis_tx(g["app_state"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StorageError(f"{path} is no consortium genesis: {e}") from None


@dataclass(frozen=True)
class ConsortiumSummary:
    chain: bytes
    chain_name: str
    height: int
    txs: int
    participants: int
    anchors: int
    state_root: bytes
    dispatch: bytes  # the public key genesis registers
    pinned: bool     # it was checked against a trusted key
    checked: str     # what else was checked (DERIVED, RUNNING, REMOTE)

    def line(self) -> str:
        trust = "trusted key" if self.pinned else "key from genesis, not pinned"
        return (f"consortium chain {self.chain.hex()} ({self.chain_name}) ok: "
                f"{self.height + 1} blocks (0..{self.height}), {self.txs} transactions, "
                f"{self.participants} participants, {self.anchors} anchors, state root "
                f"{self.state_root.hex()}; dispatch key {P.party_id(self.dispatch).hex()} "
                f"({trust}); {self.checked}")


class ConsortiumReplay(Replay):
    """Replays a validator's blocks (see the module doc); `state` is the replayed state."""

    def __init__(self, trusted: P.PublicKey | None = None,
                 genesis: Genesis | None = None) -> None:
        super().__init__(trusted)
        self.expected_genesis = genesis
        self.chain_name = ""
        self.time = (0, 0)

    def block(self, b: StoredBlock) -> None:
        h = self.height + 1
        if b.height != h:
            raise VerifyError(h, None, "missing_block", f"the chain goes on with block {b.height}")
        r = _record(h, b.header)
        if h == 0:
            self._consortium_genesis(b, r)
        assert self.validator is not None
        hash_ok = (r.hash == b"" and b.hash == P.digest(b.header) if h == 0
                   else len(r.hash) == 32 and b.hash == r.hash)
        for cond, reason, detail in (
                (r.height != h, "bad_height", f"the record says height {r.height}"),
                (r.chain != self.validator.chain, "wrong_chain",
                 f"the record names chain {r.chain.hex()}"),
                (not hash_ok, "bad_block_hash",
                 f"the stored hash {b.hash.hex()} is not the record's {r.hash.hex() or '(none)'}"),
                ((r.time_s, r.time_ns) < self.time, "t_backwards",
                 f"time {r.time_s}.{r.time_ns:09d} is before the previous block's "
                 f"{self.time[0]}.{self.time[1]:09d}"),
                (r.ntx != len(b.txs), "bad_ntx",
                 f"the record says {r.ntx} transactions, the block holds {len(b.txs)}")):
            if cond:
                raise VerifyError(h, None, reason, detail)
        effects = self.replay_txs(h, b.txs)
        self.time = (r.time_s, r.time_ns)
        self.close_block(h, effects)

    def chain_time(self) -> int:
        return self.time[0]

    def _consortium_genesis(self, b: StoredBlock, r: BlockRecord) -> None:
        g = self.expected_genesis
        if g is not None and (b.txs != (g.tx,) or r.chain_name != g.chain_name):
            raise VerifyError(0, None, "bad_genesis",
                              f"block 0 is not the genesis of the network's genesis.json "
                              f"(chain {g.chain_name}, its app_state's transaction)")
        self.genesis(b, r.chain)
        self.chain_name = r.chain_name

    def consortium_summary(self, checked: str) -> ConsortiumSummary:
        if self.validator is None or self.sealer is None:
            raise VerifyError(0, None, "missing_block", "the chain has no genesis block")
        return ConsortiumSummary(self.validator.chain, self.chain_name, self.height, self.txs,
                                 len(self.state.participants), self.anchors, self.state_root,
                                 self.sealer.raw, self.trusted is not None, checked)


def _record(h: int, raw: bytes) -> BlockRecord:
    try:
        r = BlockRecord.decode(raw)
    except StorageError as e:
        raise VerifyError(h, None, "bad_record", str(e)) from None
    for name, kind in _RECORD_TYPES:
        value: Any = getattr(r, name)
        negative = isinstance(value, int) and (isinstance(value, bool) or value < 0)
        if not isinstance(value, kind) or negative:
            raise VerifyError(h, None, "bad_record", f"the record's {name} is {value!r}")
    return r


def verify_consortium_blocks(blocks: Iterable[StoredBlock], trusted: P.PublicKey | None = None,
                             genesis: Genesis | None = None) -> ConsortiumReplay:
    """Replay a validator's `blocks` (from genesis, in order); VerifyError at the first
    failure. The state roots are the caller's to compare (check_roots)."""
    replay = ConsortiumReplay(trusted, genesis)
    for b in blocks:
        replay.block(b)
    replay.summary()  # raises for an empty chain
    return replay


def check_roots(replay: Replay, roots: Iterable[tuple[int, bytes | None]]) -> None:
    """Every (height, stored root) equals the replay's root after that block; a validator
    stores one with every block, so a missing one is a failure too."""
    replayed = dict(replay.state_roots)
    for h, stored in roots:
        root = replayed.get(h)
        if root is None:
            continue  # a block beyond the replay (the validator went on meanwhile)
        if stored != root:
            have = "no state root" if stored is None else f"state root {stored.hex()}"
            raise VerifyError(h, None, "state_root",
                              f"the store holds {have}, the replay computes {root.hex()}")


def verify_consortium_store(store: BlockStore, trusted: P.PublicKey | None = None,
                            genesis: Genesis | None = None,
                            derived: bool = True) -> ConsortiumSummary:
    """verify-chain of a validator's store: its blocks, every stored state root, and (when
    `derived`, i.e. nothing writes to it) its derived state."""
    replay = verify_consortium_blocks(store_blocks(store), trusted, genesis)
    check_roots(replay, ((h, store.state_root(h)) for h, _ in replay.state_roots))
    if derived:
        check_derived(store, replay)
    return replay.consortium_summary(DERIVED if derived else RUNNING)


def verify_consortium_remote(blocks: Iterable[StoredBlock], head: dict[str, Any],
                             trusted: P.PublicKey | None = None) -> ConsortiumSummary:
    """verify-chain of a validator's HTTP API: its blocks, and the state root its head
    reports (the API serves no other block's root)."""
    replay = verify_consortium_blocks(blocks, trusted)
    try:
        root = bytes.fromhex(head["state_root"])
        height = int(head["height"])
    except (KeyError, TypeError, ValueError) as e:
        raise VerifyError(None, None, "state_root", f"the head {head} has no state root: "
                                                    f"{e}") from None
    check_roots(replay, [(height, root)])
    return replay.consortium_summary(REMOTE)
