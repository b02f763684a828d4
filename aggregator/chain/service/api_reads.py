"""The chain API's read endpoints for dashboards (docs/PROTOCOL.md section 15): the block
list, decoded blocks and transactions, anchor lag per fog, instructions with their reports,
the validators, commit latencies. Public, GET, every list bounded; a bad query value is 400
bad_request in the aggregator's envelope. `aggregator.chain.service.api` includes the routes.

Blocks do not change once on the chain, so what is derived from one (its summary, its time)
is kept in memory, bounded. Reports are looked up by the instruction they answer in the
index the block store keeps as blocks are appended, and instructions are read a page at a
time from the store's index: no answer scans the chain.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any, TypeVar

from aggregator.chain.ledger import (
    INT64_MAX,
    Block,
    BlockMeta,
    Ledger,
    TxRecord,
)
from meterledger.errors import ProtocolError
from meterledger.infra import http as H
from meterledger.wire.decoded import decode_tx, tx_kind

BLOCKS = (50, 500)  # the block list: (default, most) blocks per answer
DISPATCH = (50, 500)  # instructions per answer
SERIES = (96, 2880)  # anchors per fog in /v1/fogs' series (a day, a month of 15 min)
FOG_ROWS = 20_000  # anchors in one /v1/fogs answer (all fogs' series together), at most
COMMITS = (20, 100)  # recent commits in /v1/validators
LATENCIES = (1024, 1024)  # kept by the ledger: its ring's size
_KEPT = 65_536  # block summaries and times kept in memory
_DIGITS = re.compile(r"[0-9]{1,30}")
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_show = H.show

K = TypeVar("K")
V = TypeVar("V")


def bad(detail: str) -> H.HTTPError:
    return H.HTTPError(400, "bad_request", detail)


def number(text: str, name: str, low: int, high: int) -> int:
    """A decimal integer in low..high given as `text` (a path or query parameter); 400
    otherwise."""
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise bad(f"{name} must be an integer from {low} to {high}, not {_show(text)}")
    return int(text)


def bounded(q: H.Query, name: str, limits: tuple[int, int], low: int = 1) -> int:
    """The query's `name` as an integer in low..limits[1], limits[0] when absent."""
    text = q.get(name)
    return limits[0] if text is None else number(text, name, low, limits[1])


def before(q: H.Query) -> int | None:
    """`before`: only what is in blocks below this height (none: up to the head)."""
    text = q.get("before")
    if text is None:
        return None
    if not _DIGITS.fullmatch(text):
        raise bad(f"before must be a non-negative decimal integer, not {_show(text)}")
    return min(int(text), INT64_MAX)


def party_id(text: str, name: str, what: str = "") -> bytes:
    """A participant's (fog's, owner's) id given as 16 hex characters; 400 otherwise."""
    if not _HEX16.fullmatch(text):
        raise bad(f"{name} must be {what}16 hex characters, not {_show(text)}")
    return bytes.fromhex(text)


def tx_digest(text: str, what: str) -> bytes:
    """A transaction's digest given as 64 hex characters (`what` names it in the 400)."""
    if not _HEX64.fullmatch(text):
        raise bad(f"{what} is 64 hex characters, not {_show(text)}")
    return bytes.fromhex(text)


def optional_id(q: H.Query, name: str, what: str = "") -> bytes | None:
    text = q.get(name)
    return None if text is None else party_id(text, name, what)


def optional_fog(q: H.Query) -> bytes | None:
    return optional_id(q, "fog")


def decoded(raw: bytes) -> dict[str, Any]:
    """A transaction by name (meterledger.wire.decoded); one that does not parse, which a
    chain never holds, is shown with its reason rather than failing the answer."""
    try:
        return decode_tx(raw)
    except ProtocolError as e:
        return {"error": e.reason, "detail": str(e)}


def _kind(raw: bytes) -> str:
    try:
        return tx_kind(raw)
    except ProtocolError:
        return "?"


class _Kept(OrderedDict[K, V]):
    """A dict that forgets its oldest entries beyond `size`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def keep(self, key: K, value: V) -> None:
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)


class ChainReads:
    """The read endpoints over a ledger (see the module doc)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._summaries: _Kept[int, dict[str, Any]] = _Kept(_KEPT)
        self._times: _Kept[int, int] = _Kept(_KEPT)

    def routes(self) -> list[H.Route]:
        R, Q = H.Route, H.Param
        return [
            R("/v1/blocks", self.blocks, tier=H.PUBLIC, query=(
                Q("before", False, "only blocks below this height (default: up to the "
                                   "head); an answer's `next` pages on"),
                Q("limit", False, f"blocks in the answer, 1 to {BLOCKS[1]} (default "
                                  f"{BLOCKS[0]})"))),
            R("/v1/fogs", self.fogs, tier=H.PUBLIC, query=(
                Q("fog", False, "only this fog (its id, 16 hex characters)"),
                Q("limit", False, f"anchors in each fog's series, 1 to {SERIES[1]} "
                                  f"(default {SERIES[0]}); all series together hold at "
                                  f"most {FOG_ROWS} anchors, beyond that ask for one "
                                  "`fog`"))),
            R("/v1/dispatch", self.dispatch, tier=H.PUBLIC, query=(
                Q("fog", False, "only instructions for this fog (16 hex characters)"),
                Q("before", False, "only instructions in blocks below this height; an "
                                   "answer's `next` pages on"),
                Q("limit", False, f"instructions in the answer, 1 to {DISPATCH[1]} "
                                  f"(default {DISPATCH[0]}; a block is never split)"))),
            R("/v1/validators", self.validators, tier=H.PUBLIC, query=(
                Q("commits", False, f"recent commits with their signers, 1 to {COMMITS[1]} "
                                    f"(default {COMMITS[0]}; consortium only)"),)),
            R("/v1/latency", self.latency, tier=H.PUBLIC, query=(
                Q("limit", False, f"latencies in the answer, newest first, 1 to "
                                  f"{LATENCIES[1]} (default {LATENCIES[0]})"),)),
        ]

    # -- blocks ----------------------------------------------------------------------------------
    def _meta(self, blocks: Sequence[Block], proposers: bool = True) -> list[BlockMeta]:
        metas = self.ledger.block_meta(blocks, proposers)
        with self._lock:
            for m in metas:
                self._times.keep(m.height, m.time)
        return metas

    def time_of(self, heights: Sequence[int]) -> dict[int, int]:
        """Block times by height (read once, then kept)."""
        with self._lock:
            missing = sorted({h for h in heights if h not in self._times})
        if missing:
            self._meta([self.ledger.block(h) for h in missing], proposers=False)
        with self._lock:
            return {h: self._times[h] for h in heights if h in self._times}

    def blocks(self, req: H.Request) -> dict[str, Any]:
        """The newest blocks (below `before`), newest first: height, hash, time, counts.

        Each: `height`, `hash`, `time` (block time, unix s), `ntx`, `kinds` (transactions
        per kind), `proposer` (the sealer's id, or the proposing validator's address) and
        `proposer_name`. `next` is the `before` of the following page (null at block 0).
        """
        q = req.query
        limit = bounded(q, "limit", BLOCKS)
        head = self.ledger.head().height
        below = before(q)
        top = head if below is None else min(head, below - 1)
        heights = list(range(top, max(-1, top - limit), -1))
        with self._lock:
            found = {h: self._summaries[h] for h in heights if h in self._summaries}
        missing = [self.ledger.block(h) for h in heights if h not in found]
        for b, m in zip(missing, self._meta(missing) if missing else [], strict=True):
            found[b.height] = {
                "height": b.height, "hash": b.hash.hex(), "time": m.time, "ntx": len(b.txs),
                "kinds": dict(Counter(_kind(t) for t in b.txs)),
                "proposer": m.proposer.hex(), "proposer_name": m.proposer_name}
            if m.proposer or b.height == 0:  # one CometBFT could not name yet: ask again
                with self._lock:
                    self._summaries.keep(b.height, found[b.height])
        return {"head": head, "blocks": [found[h] for h in heights],
                "next": heights[-1] if heights and heights[-1] > 0 else None}

    def block_decoded(self, b: Block) -> dict[str, Any]:
        """GET /v1/blocks/{height}'s `decoded`: the header's fields by name, the block's
        time and proposer, and each transaction by name."""
        (m,) = self._meta([b])
        return {"header": m.header, "time": m.time, "proposer": m.proposer.hex(),
                "proposer_name": m.proposer_name, "txs": [decoded(t) for t in b.txs]}

    # -- fogs and their anchors ------------------------------------------------------------------
    def fogs(self, req: H.Request) -> dict[str, Any]:
        """Every fog that anchored: its anchors, the newest, and the lag of its last ones.

        Each fog: `id`, `name` (registered), `anchors` (how many), `newest` and `series`
        (its last `limit` anchors, oldest first), each anchor with `height`, `index`,
        `digest`, `time` (its block's time), `checkpoint_t` (the time of the newest
        checkpoint it carried), `lag` (time - checkpoint_t, seconds), `last` (that
        checkpoint's height) and `size` (the log's size there).
        """
        q = req.query
        limit = bounded(q, "limit", SERIES)
        only = optional_fog(q)
        counts = self.ledger.anchor_counts()
        if only is not None:
            counts = {only: counts[only]} if only in counts else {}
        rows = sum(min(n, limit) for n in counts.values())
        if rows > FOG_ROWS:
            raise bad(f"{len(counts)} fogs with up to {limit} anchors each make {rows} "
                      f"anchors, more than the {FOG_ROWS} one answer holds: ask for one fog "
                      "(fog=) or a smaller limit")
        names = {p.id: p.name for p in self.ledger.participants()} if counts else {}
        out = []
        for fog, n in counts.items():
            anchors = self.ledger.anchors(fog, limit)
            times = self.time_of([a.height for a in anchors])
            series = []
            for a in anchors:
                t = times.get(a.height)
                lag = t - a.t if t is not None and a.t is not None else None
                series.append({"height": a.height, "index": a.index, "digest": a.digest.hex(),
                               "time": t, "checkpoint_t": a.t, "lag": lag, "last": a.last,
                               "size": a.size})
            out.append({"id": fog.hex(), "name": names.get(fog, ""), "anchors": n,
                        "newest": series[-1] if series else None, "series": series})
        return {"fogs": out}

    # -- dispatch: instructions and their reports --------------------------------------------------
    def _instructions(self, fog: bytes | None, below: int | None,
                      limit: int | None, above: int = -1) -> list[TxRecord]:
        """Up to `limit` instructions, newest first, in blocks above < h < below (read from
        the store's index, a page at a time)."""
        return self.ledger.instruction_page(fog, above, below, limit)

    def dispatch(self, req: H.Request) -> dict[str, Any]:
        """Instructions (of every fog, or one), newest first, decoded, with their reports.

        Each: `height`, `index`, `digest`, `time` (block time), `fog`, `tx` (hex),
        `decoded` (by name) and `reports` (the `report` transactions answering it, oldest
        first, each with `height`, `index`, `digest`, `time`, `tx`, `decoded`). A block's
        instructions are never split between pages: `next` is the following page's
        `before` (null when there is none).
        """
        q = req.query
        fog, below, limit = optional_fog(q), before(q), bounded(q, "limit", DISPATCH)
        found = self._instructions(fog, below, limit + 1)
        more = len(found) > limit
        if more:
            cut = found[limit - 1].height
            if found[limit].height == cut:  # the page would split block `cut`
                whole = [i for i in found if i.height > cut]
                if whole:
                    found = whole
                else:  # one block holds more than `limit`: all of it (only it), one page
                    found = self._instructions(fog, cut + 1, None, cut - 1)
            else:
                found = found[:limit]
        answered = self.ledger.reports([i.digest for i in found])
        reports = {i.digest: answered.get(i.digest, []) for i in found}
        times = self.time_of([i.height for i in found] +
                             [r.height for rs in reports.values() for r in rs])
        out = []
        for i in found:
            d = decoded(i.tx)
            out.append({"height": i.height, "index": i.index, "digest": i.digest.hex(),
                        "time": times.get(i.height), "fog": d.get("body", {}).get("fog"),
                        "tx": i.tx.hex(), "decoded": d, "reports": [
                            {"height": r.height, "index": r.index, "digest": r.digest.hex(),
                             "time": times.get(r.height), "tx": r.tx.hex(),
                             "decoded": decoded(r.tx)} for r in reports[i.digest]]})
        return {"instructions": out,
                "next": found[-1].height if more and found and found[-1].height > 0 else None}

    # -- validators and latency --------------------------------------------------------------------
    def validators(self, req: H.Request) -> dict[str, Any]:
        """Who agrees on blocks: the sealer, or each validator up or down and who signed.

        Embedded: `engine` "embedded", `height`, `sealer` {`id`, `pub`, `name`}. Consortium:
        `engine` "cometbft", `height`, `chain_id`, `validators` (each `name`, `party`,
        `address`, `power`, `pub_key`, `rpc`, `up`, `height`, `catching_up`, `signed`: of
        the `commits` listed), `commits` (newest first: `height`, `signers`,
        `signer_names`) and `genesis` (`chain_id` and `validators` as genesis.json has
        them). A validator is up when its CometBFT answered /status within a second; the
        answer is kept two seconds.
        """
        return self.ledger.validators(bounded(req.query, "commits", COMMITS))

    def latency(self, req: H.Request) -> dict[str, Any]:
        """Recent commit latencies (submit to committed, ms), newest first.

        `latencies`: each `height` (the block), `at` (when it was committed, unix s) and
        `ms`; the node keeps the newest 1024 since it started (`kept`).
        """
        limit = bounded(req.query, "limit", LATENCIES)
        return {"kept": LATENCIES[1], "latencies": [
            {"height": x.height, "at": round(x.at, 3), "ms": round(x.ms, 3)}
            for x in self.ledger.latencies(limit)]}
