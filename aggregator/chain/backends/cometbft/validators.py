"""The consortium as one validator sees it, for GET /v1/validators and the block list: the
network's validators (its genesis.json and network.json, in the folder the data dir's
consortium.json names), whether each one's CometBFT answers, its height, which validators
signed each recent commit, and who proposed each block.

Reads only, with the network's own RPC: each validator's /status (a short timeout, every
validator at once), the local node's /commit?height= (a canonical commit is kept, it does
not change) and /blockchain (block proposers, kept by height).

One view (the validators and the last COMMITS_MAX commits) is made at most once per `ttl_s`,
whatever number of commits a request asks for (each answer is a slice of it). Only the
very first request waits for it; after that a request finding the view older than `ttl_s`
starts a refresh in the background and is answered with the view it has, so no request
(nor the worker thread serving it) waits on the validators' RPC. The genesis names have
their own lock: the block list never waits on a refresh either.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft.network import GENESIS, NETWORK
from aggregator.chain.backends.cometbft.rpc import CometRPC, RPCError, RPCUnavailable
from aggregator.chain.ledger import UnavailableError

log = logging.getLogger("aggregator.chain.validators")

COMMITS_MAX = 100  # recent commits shown at most
_KEPT = 65_536  # proposers and canonical commits remembered, by height
_BLOCKCHAIN_PAGE = 20  # /blockchain answers at most 20 block metas per call
_FAILED = (RPCUnavailable, RPCError, KeyError, ValueError, TypeError)


@dataclass(frozen=True)
class Member:
    """One validator of the genesis, with what network.json adds (party, RPC)."""

    name: str
    party: str
    address: str  # lowercase hex, 20 bytes
    power: int
    pub_key: dict[str, Any]  # as genesis.json has it: {"type", "value" (base64)}
    rpc: str | None


def _parties(path: Path) -> dict[str, tuple[str, str]]:
    """Party and CometBFT RPC of each validator by name, from network.json (none without)."""
    try:
        net = json.loads(path.read_text())
        return {v["name"]: (v["party"], f"http://127.0.0.1:{v['rpc_port']}")
                for v in net["validators"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@dataclass(frozen=True)
class _Status:
    up: bool
    height: int | None = None
    catching_up: bool | None = None


class ValidatorWatch:
    """See the module doc. `rpc` is the local validator's CometBFT; `network` the network
    folder (None: the genesis comes from the local node's /genesis, no other RPC known)."""

    def __init__(self, rpc: CometRPC, network: Path | None, ttl_s: float = 2.0,
                 probe_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._url = rpc.url
        self._network = network
        self._ttl = ttl_s
        self._probe_timeout = probe_s  # a validator is up when its /status answers in time
        self._timeout = min(rpc.timeout, 3.0)  # the local node's reads: commits, blocks
        self._clock = clock
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self._genesis_lock = threading.Lock()  # the genesis, read once
        self._genesis: dict[str, Any] | None = None
        self._members: tuple[Member, ...] = ()
        self._commits: OrderedDict[int, tuple[list[str], bool]] = OrderedDict()  # refresher's
        self._kept: tuple[float, dict[str, Any]] | None = None  # (made at, the view)
        self.refreshing: threading.Thread | None = None  # a background refresh (tests join)
        self._proposer_lock = threading.Lock()
        self._proposers: OrderedDict[int, bytes] = OrderedDict()

    def _rpc(self, url: str | None = None) -> CometRPC:
        """The local node's RPC, or (with `url`) a validator's for the up probe."""
        return CometRPC(url or self._url, timeout=self._probe_timeout if url else self._timeout)

    # -- the genesis and the network ---------------------------------------------------------
    def _load(self) -> None:
        """The genesis validators (once: the genesis does not change)."""
        with self._genesis_lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._genesis is not None:
            return
        parties: dict[str, tuple[str, str]] = {}
        where = f"{self._network / GENESIS}" if self._network else f"{self._url} /genesis"
        try:
            if self._network is not None:
                genesis = json.loads((self._network / GENESIS).read_text())
                parties = _parties(self._network / NETWORK)
            else:
                genesis = self._rpc().call("genesis")["genesis"]
            members = []
            for v in genesis["validators"]:
                name = str(v.get("name", ""))
                party, rpc = parties.get(name, ("", None))
                members.append(Member(name, party, str(v["address"]).lower(),
                                      int(v["power"]), dict(v["pub_key"]), rpc))
            chain_id = str(genesis["chain_id"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RPCError) as e:
            raise UnavailableError(f"the consortium's genesis ({where}) cannot be read: "
                                   f"{e}") from None
        self._members = tuple(members)
        # verbatim: an auditor checks a version-2 bundle against the whole document (its
        # app_state names the chain, tools.audit_consortium.load_genesis reads it)
        self._genesis = {**genesis, "chain_id": chain_id}

    def names(self) -> dict[str, str]:
        """Validator names by lowercase hex address."""
        self._load()
        return {m.address: m.name for m in self._members}

    # -- who is up --------------------------------------------------------------------------
    def _probe(self, m: Member) -> _Status:
        if m.rpc is None:
            return _Status(False)
        try:
            info = self._rpc(m.rpc).status()["sync_info"]
            return _Status(True, int(info["latest_block_height"]), bool(info["catching_up"]))
        except _FAILED:
            return _Status(False)

    def _status(self) -> dict[str, _Status]:
        """Every validator's /status at once (a view is kept `ttl_s`: see view)."""
        probed = [m for m in self._members if m.rpc is not None]
        with ThreadPoolExecutor(max_workers=max(1, len(probed))) as pool:
            found = dict(zip([m.address for m in probed], pool.map(self._probe, probed),
                             strict=True))
        if not probed:  # no network.json: the local node alone can say it is up
            found.update(self._local())
        return found

    def _local(self) -> dict[str, _Status]:
        try:
            s = self._rpc().status()
            info = s["sync_info"]
            return {str(s["validator_info"]["address"]).lower(): _Status(
                True, int(info["latest_block_height"]), bool(info["catching_up"]))}
        except _FAILED:
            return {}

    # -- commits ----------------------------------------------------------------------------
    def _signers(self, height: int) -> list[str] | None:
        kept = self._commits.get(height)
        if kept is not None and kept[1]:
            return kept[0]
        try:
            c = self._rpc().commit(height)
            signed = [str(s["validator_address"]).lower()
                      for s in c["signed_header"]["commit"]["signatures"]
                      if s["block_id_flag"] == 2]
            canonical = bool(c.get("canonical"))
        except _FAILED:
            return None
        self._commits[height] = (signed, canonical)
        while len(self._commits) > _KEPT:
            self._commits.popitem(last=False)
        return signed

    def _recent(self, n: int, top: int) -> list[dict[str, Any]]:
        names = {m.address: m.name for m in self._members}
        out = []
        for h in range(top, max(0, top - n), -1):
            signed = self._signers(h)
            if signed is None:
                break
            out.append({"height": h, "signers": signed,
                        "signer_names": [names.get(a, "") for a in signed]})
        return out

    def view(self, commits: int, height: int) -> dict[str, Any]:
        """GET /v1/validators on a consortium node (docs/PROTOCOL.md section 15): the kept
        view's newest `commits` commits (see the module doc for how it is refreshed), with
        `height`, this node's head."""
        kept = self._kept
        if kept is None:  # the very first view: made by whoever gets here first
            with self._refresh_lock:
                kept = self._kept
                if kept is None:
                    kept = self._refresh()
        elif self._clock() - kept[0] >= self._ttl and self._refresh_lock.acquire(blocking=False):
            try:  # stale: refreshed in the background, answered with what is kept now
                self.refreshing = threading.Thread(target=self._background,
                                                   name="validator-view", daemon=True)
                self.refreshing.start()
            except BaseException:
                self._refresh_lock.release()
                raise
        return _sliced(kept[1], max(0, min(commits, COMMITS_MAX)), height)

    def _background(self) -> None:
        try:
            self._refresh()
        except Exception as e:  # the kept view stays; the next stale request tries again
            log.warning("refreshing the validators' view failed: %s", e)
        finally:
            self._refresh_lock.release()

    def _refresh(self) -> tuple[float, dict[str, Any]]:
        """Make the view (the caller holds _refresh_lock) and keep it."""
        kept = (self._clock(), self._view())
        self._kept = kept
        return kept

    def _view(self) -> dict[str, Any]:
        self._load()
        statuses = self._status()
        top = self._local_height()
        recent = self._recent(COMMITS_MAX, top) if top else []
        assert self._genesis is not None
        rows = []
        for m in self._members:
            st = statuses.get(m.address, _Status(False))
            rows.append({"name": m.name, "party": m.party, "address": m.address,
                         "power": m.power, "pub_key": m.pub_key, "rpc": m.rpc,
                         "up": st.up, "height": st.height, "catching_up": st.catching_up})
        return {"engine": "cometbft", "height": 0,
                "chain_id": self._genesis["chain_id"], "validators": rows,
                "commits": recent, "genesis": self._genesis}

    def _local_height(self) -> int:
        """The local CometBFT's newest height (0 when it does not answer)."""
        try:
            return int(self._rpc().status()["sync_info"]["latest_block_height"])
        except _FAILED:
            return 0

    # -- proposers --------------------------------------------------------------------------
    def proposers(self, heights: Sequence[int]) -> dict[int, bytes]:
        """The proposer's address of each CometBFT block (height >= 1) asked; a height whose
        block CometBFT cannot give is left out."""
        with self._proposer_lock:
            missing = sorted({h for h in heights if h >= 1 and h not in self._proposers})
            while missing:
                lo = missing[0]
                hi = min(missing[-1], lo + _BLOCKCHAIN_PAGE - 1)
                try:
                    r = self._rpc().call("blockchain", minHeight=str(lo), maxHeight=str(hi))
                    for meta in r["block_metas"]:
                        h = int(meta["header"]["height"])
                        self._proposers[h] = bytes.fromhex(meta["header"]["proposer_address"])
                except _FAILED:
                    break  # CometBFT away: no proposers this time, none kept
                while len(self._proposers) > _KEPT:
                    self._proposers.popitem(last=False)
                missing = [h for h in missing if h > hi]
            return {h: self._proposers[h] for h in heights if h in self._proposers}


def _sliced(view: dict[str, Any], commits: int, height: int) -> dict[str, Any]:
    """The view with its newest `commits` commits, what each validator signed of them, and
    `height`."""
    recent = view["commits"][:commits]
    rows = [{**v, "signed": sum(v["address"] in c["signers"] for c in recent)}
            for v in view["validators"]]
    return {**view, "height": height, "validators": rows, "commits": recent}
