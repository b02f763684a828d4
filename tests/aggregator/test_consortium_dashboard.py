"""The dashboard's reads on a real four-validator CometBFT network (marker `consortium`):
GET /v1/validators names every validator of the genesis, up or down, and who signed each
recent commit; the block list names each block's proposer; latencies are measured."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aggregator.chain.backends.cometbft.network import PARTIES, POWER
from tests.kit.consortium import get, local_net, post
from tests.kit.fogkit import wait

pytestmark = [pytest.mark.consortium, pytest.mark.timeout(600)]


def _row(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (row,) = [v for v in doc["validators"] if v["name"] == name]
    return row


def test_validators_up_then_one_stopped_is_down_and_signs_no_later_commit() -> None:
    with local_net() as t:
        t.start()
        t.wait_api()
        api = t.api("dispatch")
        genesis = json.loads((t.net.root / "genesis.json").read_text())
        status, reg = post(api, t.register_tx("fog"))
        assert status == 200, reg

        def all_up() -> bool:
            d = get(api, "/v1/validators")
            return all(v["up"] and v["height"] >= reg["height"] for v in d["validators"]) \
                and bool(d["commits"]) and d["commits"][0]["height"] >= reg["height"]

        wait(all_up, timeout=120, every=0.2, what="every validator up, the commit listed")
        doc = get(api, "/v1/validators?commits=5")
        assert (doc["engine"], doc["chain_id"]) == ("cometbft", genesis["chain_id"])
        assert doc["genesis"] == genesis  # verbatim: what an auditor checks bundles against
        assert [(v["name"], v["party"], v["address"], v["power"], v["pub_key"], v["up"])
                for v in doc["validators"]] == [
            (g["name"], dict(PARTIES)[g["name"]], g["address"].lower(), POWER, g["pub_key"], True)
            for g in genesis["validators"]]
        addresses = {v["address"]: v["name"] for v in doc["validators"]}
        heights = [c["height"] for c in doc["commits"]]
        assert heights == sorted(heights, reverse=True) and 1 <= len(heights) <= 5
        for c in doc["commits"]:  # more than 2/3 of the power signed each
            assert 3 * len(c["signers"]) > 2 * len(addresses), c
            assert c["signer_names"] == [addresses[a] for a in c["signers"]]
        # the block list and a decoded block name the proposer; the latency was measured
        blocks = get(api, "/v1/blocks")["blocks"]
        assert blocks[-1]["height"] == 0 and blocks[-1]["proposer"] == ""
        for b in blocks[:-1]:
            assert addresses[b["proposer"]] == b["proposer_name"], b
        block = get(api, f"/v1/blocks/{reg['height']}")
        header = block["decoded"]["header"]
        assert (header["height"], header["ntx"], header["hash"]) == (
            reg["height"], 1, block["hash"])
        assert block["decoded"]["time"] == header["t"] > 0
        assert block["decoded"]["txs"][0]["kind"] == "register"
        assert get(api, "/v1/latency")["latencies"][0]["height"] == reg["height"]

        # plant stops: down, and no commit it could not have signed lists it
        plant = _row(doc, "plant")["address"]
        t.stop("plant")
        # plant signed at most the height after the one it committed, which no running
        # validator is more than one height behind: from `quiet` on it signed nothing
        quiet = max(t.height(n) for n in t.names if n != "plant") + 3
        while get(api, "/v1/head")["height"] < quiet:
            status, doc = post(api, t.register_tx("fog"))
            assert status == 200, doc

        def plant_down() -> bool:
            d = get(api, "/v1/validators")
            return not _row(d, "plant")["up"] and d["commits"][0]["height"] >= quiet

        wait(plant_down, timeout=120, every=0.2, what="plant shown down, the commits after it")
        doc = get(api, "/v1/validators")
        assert (_row(doc, "plant")["up"], _row(doc, "plant")["height"]) == (False, None)
        assert all(_row(doc, n)["up"] for n in t.names if n != "plant")
        later = [c for c in doc["commits"] if c["height"] >= quiet]
        assert later and all(plant not in c["signers"] and "plant" not in c["signer_names"]
                             and len(c["signers"]) == 3 for c in later)
        assert _row(doc, "plant")["signed"] <= len(doc["commits"]) - len(later)
