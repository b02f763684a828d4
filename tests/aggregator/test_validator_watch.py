"""The consortium's validator view (aggregator.chain.backends.cometbft.validators) against a
stand-in for CometBFT's RPC: who is up, signers of recent commits, proposers, and the
caching that keeps a polling page from asking every validator on every load. The real
network: tests/aggregator/test_consortium_dashboard.py."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.backends.cometbft.rpc import CometRPC, RPCUnavailable
from aggregator.chain.backends.cometbft.validators import ValidatorWatch
from aggregator.chain.ledger import UnavailableError

NAMES = ("dispatch", "plant")
ADDR = {"dispatch": "AA" * 20, "plant": "BB" * 20}
PORT = {"dispatch": 30001, "plant": 30011}
KEY = {n: {"type": "tendermint/PubKeyEd25519", "value": f"{n}=="} for n in NAMES}


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeComet:
    """CometBFT's answers by node (port): height 7, commits 1..7 signed by those up."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: Counter[tuple[str, str]] = Counter()

    def call(self, rpc: CometRPC, method: str, **params: Any) -> Any:
        node = next(n for n, p in PORT.items() if rpc.url.endswith(f":{p}"))
        self.calls[(node, method)] += 1
        if node in self.down:
            raise RPCUnavailable(f"{node} is down")
        if method == "status":
            return {"sync_info": {"latest_block_height": "7", "catching_up": False},
                    "validator_info": {"address": ADDR[node]}}
        if method == "commit":
            h = int(params["height"])
            return {"canonical": h < 7, "signed_header": {"commit": {"signatures": [
                {"block_id_flag": 1 if n in self.down else 2, "validator_address": ADDR[n]}
                for n in NAMES]}}}
        if method == "genesis":
            return {"genesis": {"chain_id": "meterledger-x", "validators": [
                {"address": ADDR[n], "pub_key": KEY[n], "power": "10", "name": n}
                for n in NAMES]}}
        if method == "blockchain":
            lo, hi = int(params["minHeight"]), int(params["maxHeight"])
            return {"block_metas": [{"header": {"height": str(h), "proposer_address":
                                                ADDR[NAMES[h % 2]]}} for h in range(hi, lo - 1, -1)]}
        raise AssertionError(method)


@pytest.fixture
def comet(monkeypatch: pytest.MonkeyPatch) -> FakeComet:
    fake = FakeComet()
    monkeypatch.setattr(CometRPC, "call", lambda self, method, **p: fake.call(self, method, **p))
    return fake


def network(root: Path) -> Path:
    (root / "genesis.json").write_text(json.dumps({"chain_id": "meterledger-x", "validators": [
        {"address": ADDR[n], "pub_key": KEY[n], "power": "10", "name": n} for n in NAMES]}))
    (root / "network.json").write_text(json.dumps({"validators": [
        {"name": n, "party": f"the {n}", "rpc_port": PORT[n]} for n in NAMES]}))
    return root


def test_up_down_signers_and_one_probe_per_validator_per_ttl(tmp_path: Path,
                                                             comet: FakeComet) -> None:
    clock = Clock()
    watch = ValidatorWatch(CometRPC(f"http://127.0.0.1:{PORT['dispatch']}"),
                           network(tmp_path), ttl_s=2.0, clock=clock)
    doc = watch.view(3, 7)
    assert [(v["name"], v["party"], v["address"], v["power"], v["pub_key"], v["up"],
             v["height"], v["signed"]) for v in doc["validators"]] == [
        (n, f"the {n}", ADDR[n].lower(), 10, KEY[n], True, 7, 3) for n in NAMES]
    assert [c["height"] for c in doc["commits"]] == [7, 6, 5]
    assert doc["commits"][0]["signer_names"] == list(NAMES)
    assert doc["genesis"]["chain_id"] == doc["chain_id"] == "meterledger-x"
    probes = comet.calls[("plant", "status")]
    for _ in range(5):  # a page polling: the view is kept ttl_s
        assert watch.view(3, 8) == {**doc, "height": 8}
    assert comet.calls[("plant", "status")] == probes
    # plant stops; after ttl_s a request gets the kept view while it is refreshed in the
    # background, and the refreshed view shows plant down and absent from the new commit
    comet.down.add("plant")
    clock.t += 2.0
    assert watch.view(3, 7) == {**doc, "height": 7}
    assert watch.refreshing is not None
    watch.refreshing.join(10)
    doc = watch.view(3, 7)
    plant = doc["validators"][1]
    assert (plant["up"], plant["height"], plant["catching_up"]) == (False, None, None)
    assert doc["commits"][0]["signers"] == [ADDR["dispatch"].lower()]  # 7: not canonical
    assert doc["commits"][1]["signers"] == [a.lower() for a in ADDR.values()]  # 6 was kept
    assert comet.calls[("plant", "status")] == probes + 1
    assert comet.calls[("dispatch", "commit")] == 7 + 1  # canonical commits read once


def test_one_refresh_per_ttl_whatever_commits_and_no_request_waits_on_it(
        tmp_path: Path, comet: FakeComet, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    watch = ValidatorWatch(CometRPC(f"http://127.0.0.1:{PORT['dispatch']}"),
                           network(tmp_path), ttl_s=2.0, clock=clock)
    first = watch.view(100, 7)  # the very first waits: the last 100 commits (here 7)
    assert [c["height"] for c in first["commits"]] == [7, 6, 5, 4, 3, 2, 1]
    calls = sum(comet.calls.values())
    for n in range(1, 101):  # cycling commits= does not defeat the cache
        doc = watch.view(n, 7)
        assert [c["height"] for c in doc["commits"]] == list(range(7, max(0, 7 - n), -1))
        assert doc["validators"][0]["signed"] == min(n, 7)
    assert sum(comet.calls.values()) == calls and watch.refreshing is None
    # a slow refresh: requests (and the block list's names) are answered meanwhile
    release, probing = threading.Event(), threading.Event()
    real = comet.call

    def slow(rpc: CometRPC, method: str, **params: Any) -> Any:
        if method == "status":
            probing.set()
            release.wait(10)
        return real(rpc, method, **params)

    monkeypatch.setattr(CometRPC, "call", lambda self, method, **p: slow(self, method, **p))
    clock.t += 2.0
    started = time.monotonic()
    assert watch.view(5, 8)["commits"] == first["commits"][:5]
    assert probing.wait(10)
    refresh = watch.refreshing
    assert watch.view(2, 8)["commits"] == first["commits"][:2]
    assert watch.names() == {a.lower(): n for n, a in ADDR.items()}
    assert watch.refreshing is refresh  # one refresh at a time
    assert time.monotonic() - started < 5
    release.set()
    assert refresh is not None
    refresh.join(10)
    assert not refresh.is_alive()


def test_proposers_are_read_in_pages_and_kept(tmp_path: Path, comet: FakeComet) -> None:
    watch = ValidatorWatch(CometRPC(f"http://127.0.0.1:{PORT['dispatch']}"),
                           network(tmp_path))
    got = watch.proposers(list(range(0, 45)))
    assert sorted(got) == list(range(1, 45))  # block 0, the genesis, has none
    assert got[3] == bytes.fromhex(ADDR["plant"]) and got[4] == bytes.fromhex(ADDR["dispatch"])
    assert comet.calls[("dispatch", "blockchain")] == 3  # 20 per call
    assert watch.proposers([5, 6]) == {5: got[5], 6: got[6]}
    assert comet.calls[("dispatch", "blockchain")] == 3
    comet.down.add("dispatch")
    assert watch.proposers([50]) == {}  # CometBFT away: none, and nothing kept
    assert watch.names() == {a.lower(): n for n, a in ADDR.items()}


def test_without_a_network_folder_the_genesis_comes_from_the_node(tmp_path: Path,
                                                                  comet: FakeComet) -> None:
    watch = ValidatorWatch(CometRPC(f"http://127.0.0.1:{PORT['dispatch']}"), None)
    doc = watch.view(1, 7)
    assert [(v["name"], v["party"], v["rpc"], v["up"]) for v in doc["validators"]] == [
        ("dispatch", "", None, True), ("plant", "", None, False)]  # only itself it can ask
    assert doc["genesis"]["validators"][1]["pub_key"] == KEY["plant"]
    gone = ValidatorWatch(CometRPC(f"http://127.0.0.1:{PORT['dispatch']}"), tmp_path / "gone")
    with pytest.raises(UnavailableError, match="genesis"):  # the API's 503
        gone.view(1, 7)
