"""The dispatch chain's state machine as a CometBFT ABCI 2.0 application.

The same `Validator`, kinds and state root as the embedded backend, applied to the blocks
CometBFT orders (docs/PROTOCOL.md section 23):

    InitChain        genesis: app_state {"meterledger": {"genesis_tx": HEX}} holds the
                     dispatch key registering itself; it becomes block 0 (CometBFT's
                     heights start at 1, so block h of the chain is CometBFT's height h)
    CheckTx          the Validator against the mempool's view (committed state plus the
                     transactions it already holds); refused: code 1, data = the reason
    PrepareProposal  the proposer keeps, in order, what is still valid and fits max_tx_bytes
                     (counted as CometBFT does: each transaction's size in the block's Data
                     protobuf, its field tag and length prefix included)
    ProcessProposal  REJECT a block holding a transaction the rules refuse (a faulty
                     proposer's); the rules read the committed state only, so every honest
                     validator decides alike
    FinalizeBlock    each transaction applied in order with the same rules; a refused one
                     (possible when blocks are replayed, not proposed) gets code 1 and its
                     reason in `data` (both in CometBFT's results hash) and changes nothing;
                     app_hash = the state root after the block
    Commit           the block, its effects and root written to SQLite as one transaction
    Info             the last committed height and app hash; CometBFT replays what is missing

Nothing reads the wall clock: block time is the header's, heights and roots are integers and
bytes, and every collection is walked in block order.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aggregator.chain.app.state import ZERO_ROOT, Effect, MemoryState, block_state_root
from aggregator.chain.app.validator import Validator
from aggregator.chain.backends.cometbft import engine
from aggregator.chain.ledger import ChainError, Receipt, StorageError
from aggregator.chain.store import SQLiteBlockStore
from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.wire import cometbft as W
from meterledger.wire.cometbft_proto import varint

log = logging.getLogger("meterledger.chain.app")

REFUSED = 1  # the ABCI code of every refusal; the stable reason is in `data`
CODESPACE = "meterledger"
MAX_TX = 64 * 1024  # one transaction's bytes at most (the API's body cap)
_REMEMBERED = 10_000  # refusals in blocks kept for the submitters waiting on them


@dataclass(frozen=True)
class BlockRecord:
    """What the app stores as a block's header: CometBFT gives the app the block's hash,
    height and time, not its header (the header and its commit are CometBFT's, served by its
    RPC). A deterministic CBOR map."""

    chain: bytes      # the chain id (the dispatch key's id)
    height: int
    hash: bytes       # CometBFT's block hash (empty for block 0, the genesis)
    ntx: int          # transactions the app accepted
    time_s: int       # block time (CometBFT's header time), seconds and nanoseconds
    time_ns: int
    chain_name: str   # CometBFT's chain id

    def encode(self) -> bytes:
        return P.encode({1: self.chain, 2: self.height, 3: self.hash, 4: self.ntx,
                         5: self.time_s, 6: self.time_ns, 7: self.chain_name})

    @classmethod
    def decode(cls, raw: bytes) -> BlockRecord:
        try:
            m = P.decode(raw)
            return cls(m[1], m[2], m[3], m[4], m[5], m[6], m[7])
        except (ProtocolError, KeyError, TypeError) as e:
            raise StorageError(f"a consortium block record cannot be read: {e}") from None


@dataclass
class _Pending:
    height: int
    record: BlockRecord
    effects: list[Effect]
    root: bytes
    refused: list[tuple[bytes, str, str]]  # digest, reason, detail


@dataclass(frozen=True)
class Outcome:
    """What became of a transaction in a committed block."""

    receipt: Receipt | None
    reason: str = ""
    detail: str = ""


class ChainApp:
    """The ABCI application over a SQLite block store (see the module doc)."""

    def __init__(self, store: SQLiteBlockStore) -> None:
        self.store = store
        self._T = engine.pb("tendermint.abci.types_pb2")
        self._lock = threading.Lock()
        self.committed = threading.Condition()
        self._validator: Validator | None = None
        self._root = ZERO_ROOT
        self._pending: _Pending | None = None
        self._refused: OrderedDict[bytes, tuple[str, str]] = OrderedDict()
        self._load()
        self._mempool = MemoryState(store)
        self._mempool_conn = -1  # the connection whose CheckTx built the view

    def _load(self) -> None:
        h = self.store.height()
        if h < 0:
            return
        b = self.store.block(0)
        assert b is not None
        self._validator = Validator(BlockRecord.decode(b.header).chain)
        root = self.store.state_root(h)
        if root is None:
            raise StorageError(f"block {h} has no state root")
        self._root = root

    @property
    def chain_id(self) -> bytes | None:
        return None if self._validator is None else self._validator.chain

    def handle(self, kind: str, req: Any, conn: int = 0) -> Any:
        """The ABCI handler: one request at a time (abci.ABCIServer); `conn` numbers the
        connection it came on."""
        with self._lock:
            if kind == "check_tx":
                return self._check_tx(req, conn)
            method = getattr(self, "_" + kind, None)
            if method is None:
                return getattr(self._T, "Response" + _camel(kind))()
            return method(req)

    # -- info and genesis --------------------------------------------------------------------
    def _info(self, req: Any) -> Any:
        h = self.store.height()
        return self._T.ResponseInfo(data="meterledger", version=engine.VERSION, app_version=1,
                                    last_block_height=max(h, 0),
                                    last_block_app_hash=self._root if h >= 0 else b"")

    def _init_chain(self, req: Any) -> Any:
        try:
            raw = W.genesis_tx(json.loads(req.app_state_bytes or b"{}"))
            chain: bytes = P.parse(raw, schema=False).kid
        except (ValueError, KeyError, TypeError, ProtocolError) as e:
            raise StorageError("genesis.json's app_state must be {\"meterledger\": "
                               f"{{\"genesis_tx\": HEX}}}}: {e}") from None
        if req.initial_height not in (0, 1):
            raise StorageError(f"the chain starts at CometBFT height 1, not {req.initial_height}")
        validator = Validator(chain)
        effect = validator.check_genesis(raw)  # ChainError: a genesis the rules refuse
        if self.store.height() >= 0:  # InitChain again (CometBFT saw no height yet): same?
            b = self.store.block(0)
            if b is None or b.txs != (raw,):
                raise StorageError("this app's store holds another chain's genesis")
        else:
            record = BlockRecord(chain, 0, b"", 1, req.time.seconds, req.time.nanos,
                                 req.chain_id)
            root = block_state_root(ZERO_ROOT, 0, [effect])
            self.store.append(0, record.encode(), [effect], root)
            self._root = root
        self._validator = validator
        self._mempool = MemoryState(self.store)
        with self.committed:
            self.committed.notify_all()
        log.info("genesis of chain %s (%s)", chain.hex(), req.chain_id)
        return self._T.ResponseInitChain(app_hash=self._root)

    # -- the mempool -------------------------------------------------------------------------
    def _check_tx(self, req: Any, conn: int) -> Any:
        # a RECHECK (type 1) after a commit finds the view restarted from the new state; so
        # does the first CheckTx on a new connection: a restarted CometBFT's mempool is empty
        if conn != self._mempool_conn:
            self._mempool_conn, self._mempool = conn, MemoryState(self.store)
        raw = bytes(req.tx)
        try:
            effect = self._check(raw, self._mempool)
        except ChainError as e:
            if req.type == 1:  # CometBFT drops it: a submitter waiting on it learns why
                self._remember([(P.digest(raw), e.reason, e.detail)])
            return self._T.ResponseCheckTx(code=REFUSED, data=e.reason.encode(),
                                           log=f"{e.reason}: {e.detail}", codespace=CODESPACE)
        self._mempool.apply(effect)
        with self.committed:  # valid again (a refusal for a nonce gap, since filled)
            self._refused.pop(P.digest(raw), None)
        return self._T.ResponseCheckTx(code=0)

    def _remember(self, refused: list[tuple[bytes, str, str]]) -> None:
        """Refusals for the submitters waiting on them (outcome()); wakes them."""
        with self.committed:
            for digest, reason, detail in refused:
                self._refused[digest] = (reason, detail)
                if len(self._refused) > _REMEMBERED:
                    self._refused.popitem(last=False)
            self.committed.notify_all()

    def _check(self, raw: bytes, state: MemoryState) -> Effect:
        if self._validator is None:
            raise ChainError("unavailable", "the chain has no genesis yet")
        if len(raw) > MAX_TX:
            raise ChainError("too_large", f"a transaction is at most {MAX_TX} bytes, this is "
                                          f"{len(raw)}")
        return self._validator.check(raw, state)

    # -- proposals -----------------------------------------------------------------------------
    def _prepare_proposal(self, req: Any) -> Any:
        view, kept, size = MemoryState(self.store), [], 0
        for tx in req.txs:
            raw = bytes(tx)
            if size + _data_size(raw) > req.max_tx_bytes:
                break
            try:
                view.apply(self._check(raw, view))
            except ChainError:
                continue  # no longer valid (a nonce taken by a committed block)
            kept.append(raw)
            size += _data_size(raw)
        return self._T.ResponsePrepareProposal(txs=kept)

    def _process_proposal(self, req: Any) -> Any:
        view = MemoryState(self.store)
        status = self._T.ResponseProcessProposal.ACCEPT
        for tx in req.txs:
            try:
                view.apply(self._check(bytes(tx), view))
            except ChainError as e:
                log.warning("rejecting the proposal for height %d: a transaction is refused "
                            "(%s: %s)", req.height, e.reason, e.detail)
                status = self._T.ResponseProcessProposal.REJECT
                break
        return self._T.ResponseProcessProposal(status=status)

    def _verify_vote_extension(self, req: Any) -> Any:  # extensions are off; never refuse
        return self._T.ResponseVerifyVoteExtension(
            status=self._T.ResponseVerifyVoteExtension.ACCEPT)

    # -- blocks --------------------------------------------------------------------------------
    def _finalize_block(self, req: Any) -> Any:
        height = self.store.height() + 1
        if req.height != height or self._validator is None:
            raise StorageError(f"CometBFT finalizes height {req.height}; this app's next "
                               f"block is {height}")
        view, refused, results = MemoryState(self.store), [], []
        effects: list[Effect] = []
        for tx in req.txs:
            raw = bytes(tx)
            try:
                effect = self._check(raw, view)
            except ChainError as e:
                refused.append((P.digest(raw), e.reason, e.detail))
                results.append(self._T.ExecTxResult(code=REFUSED, data=e.reason.encode(),
                                                    log=e.detail, codespace=CODESPACE))
                continue
            # with its place, as verify-chain replays it: the same bytes again are a duplicate
            view.apply(effect, Receipt(effect.digest, height, len(effects)))
            effects.append(effect)
            results.append(self._T.ExecTxResult(code=0))
        record = BlockRecord(self._validator.chain, height, bytes(req.hash), len(effects),
                             req.time.seconds, req.time.nanos, "")
        root = block_state_root(self._root, height, effects)
        self._pending = _Pending(height, record, effects, root, refused)
        return self._T.ResponseFinalizeBlock(tx_results=results, app_hash=root)

    def _commit(self, req: Any) -> Any:
        p, self._pending = self._pending, None
        if p is None:
            raise StorageError("Commit without a finalized block")
        self.store.append(p.height, p.record.encode(), p.effects, p.root, p.record.hash)
        self._root = p.root
        self._mempool = MemoryState(self.store)  # CheckTx RECHECKs rebuild the view
        self._remember(p.refused)
        return self._T.ResponseCommit(retain_height=0)

    def close(self) -> None:
        """Close the store once no request is being handled (a Commit is never cut)."""
        with self._lock:
            self.store.close()

    def outcome(self, digest: bytes) -> Outcome | None:
        """A committed transaction's receipt, or the reason a block refused it; None while
        it is in no committed block. Call with `committed` held to wait on it."""
        r = self.store.receipt(digest)
        if r is not None:
            return Outcome(r)
        refused = self._refused.get(digest)
        return None if refused is None else Outcome(None, *refused)

    # -- queries -------------------------------------------------------------------------------
    def _query(self, req: Any) -> Any:
        """`/head` the committed height, state root and chain id; `/tx` (data: a digest) its
        receipt. JSON values; a third party's tools read the rest over the HTTP API."""
        h = self.store.height()
        if req.path == "/head":
            value = {"height": h, "state_root": self._root.hex(),
                     "chain": (self.chain_id or b"").hex()}
        elif req.path == "/tx":
            r = self.store.receipt(bytes(req.data))
            if r is None:
                return self._T.ResponseQuery(code=REFUSED, log="no such transaction",
                                             codespace=CODESPACE, height=max(h, 0))
            value = {"digest": r.digest.hex(), "height": r.height, "index": r.index}
        else:
            return self._T.ResponseQuery(code=REFUSED, log=f"unknown path {req.path!r}: "
                                         "/head or /tx", codespace=CODESPACE)
        return self._T.ResponseQuery(code=0, value=json.dumps(value).encode(),
                                     height=max(h, 0))


def _data_size(raw: bytes) -> int:
    """What a transaction adds to max_tx_bytes as CometBFT counts it (types.Txs.Validate):
    its size in the block's Data protobuf, field tag and length prefix included."""
    return 1 + len(varint(len(raw))) + len(raw)


def _camel(kind: str) -> str:
    return "".join(w.capitalize() for w in kind.split("_"))
