"""The dispatch chain on a real four-validator CometBFT network (marker `consortium`): what
any validator's API is sent is committed by all, with the same app hash and an offline
proof; faults: one validator killed, two down, one computing another result, all four
restarted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aggregator.chain.backends.cometbft import supervise
from meterledger import wire as P
from meterledger.wire import chain as C
from meterledger.wire import cometbft as W
from tests.kit.chainkit import FogSide
from tests.kit.consortium import T0, LocalNet, get, local_net, post
from tests.kit.fogkit import wait
from tools import audit_consortium

pytestmark = [pytest.mark.consortium, pytest.mark.timeout(600)]


def _heads_agree(t: LocalNet, names: list[str], height: int) -> bool:
    heads = [get(t.api(n), "/v1/head") for n in names]
    return all(h["height"] >= height for h in heads) and \
        len({(h["height"], h["state_root"]) for h in heads}) == 1


def _anchor(t: LocalNet, fog: FogSide, nonce: int, entries: int = 3) -> bytes:
    fog.grow(entries)
    return P.sign1(fog.key, C.tx(fog.key.id, nonce, C.ANCHOR, fog.anchor(), T0, t.key.id))


def test_what_any_validator_is_sent_is_committed_by_all_with_one_app_hash_and_a_proof(
        tmp_path: Path) -> None:
    with local_net() as t:
        t.start()
        t.wait_api()
        fog = FogSide(tmp_path)
        status, reg = post(t.api("regulator-prov"), t.register_tx("fog", fog.key))
        assert status == 200, reg
        # a validator checks a transaction against the blocks it has committed: the plant's
        # may not hold the registration yet when regulator-prov answers
        wait(lambda: _heads_agree(t, t.names, reg["height"]), timeout=120, every=0.2,
             what="every validator holding the registration")
        status, anc = post(t.api("plant"), _anchor(t, fog, 1))
        assert status == 200, anc
        wait(lambda: _heads_agree(t, t.names, anc["height"]), timeout=120, every=0.2,
             what="four validators at one state root")
        head = get(t.api("regulator-nat"), "/v1/head")
        assert head["engine"] == "cometbft" and head["sealer_pub"] == ""
        # the rules refuse with their reason, at CheckTx, before any block
        status, doc = post(t.api("dispatch"), _anchor(t, fog, 1))
        assert (status, doc["error"]) == (400, "nonce_reused"), doc
        # the anchor's finality checks offline against the genesis' validators
        tx = get(t.api("dispatch"), f"/v1/tx/{anc['digest']}")
        genesis = audit_consortium.load_genesis(t.net.root / "genesis.json")
        block = W.verify_tx_in_block(genesis.chain_name,
                                     W.parse_signed_header(tx["finality"]["signed_header"]),
                                     genesis.validators, bytes.fromhex(tx["tx"]),
                                     W.parse_tx_proof(tx["finality"]["tx_proof"])[1])
        assert block.height == anc["height"] and 3 * block.signed_power > 2 * 40
        assert genesis.chain == t.key.id
        anchors = get(t.api("plant"), f"/v1/anchors?fog={fog.key.id_hex}")["anchors"]
        assert [a["digest"] for a in anchors] == [anc["digest"]]
        fog.close()


def test_one_validator_killed_the_others_go_on_and_it_catches_up(tmp_path: Path) -> None:
    with local_net() as t:
        t.start()
        t.wait_api()
        fog = FogSide(tmp_path)
        assert post(t.api("dispatch"), t.register_tx("fog", fog.key))[0] == 200
        t.kill("plant")
        landed = []
        for nonce in (1, 2, 3):
            status, doc = post(t.api("regulator-nat"), _anchor(t, fog, nonce))
            assert status == 200, doc
            landed.append(doc)
        t.start("plant")  # its app replays nothing it has; CometBFT gives it what it lacks
        t.wait_api("plant")
        wait(lambda: _heads_agree(t, t.names, landed[-1]["height"]), timeout=180, every=0.2,
             what="the restarted validator at the others' state root")
        anchors = get(t.api("plant"), f"/v1/anchors?fog={fog.key.id_hex}")["anchors"]
        assert [a["digest"] for a in anchors] == [d["digest"] for d in landed]
        fog.close()


def test_two_of_four_down_nothing_is_committed_and_a_pending_anchor_lands_once(
        tmp_path: Path) -> None:
    with local_net() as t:
        t.start(*t.names)
        t.wait_api()
        fog = FogSide(tmp_path)
        status, reg = post(t.api("dispatch"), t.register_tx("fog", fog.key))
        assert status == 200, reg
        # every validator at the registration's block before two stop: a height read below
        # must not still be catching up to it
        wait(lambda: _heads_agree(t, t.names, reg["height"]), timeout=120, every=0.2,
             what="every validator holding the registration")
        t.stop("regulator-nat", "plant")
        supervise.stop([t.running.pop("dispatch")])  # restart with a short commit wait
        t.running.update({r.validator.name: r for r in supervise.start(
            t.net, ["dispatch"], ["--commit-timeout-s", "3"])})
        t.wait_api("dispatch")
        before = t.height("regulator-prov")
        anchor = _anchor(t, fog, 1)
        status, doc = post(t.api("dispatch"), anchor)
        assert (status, doc["error"]) == (503, "unavailable"), doc
        assert "not committed within" in doc["detail"]  # sent: it waits in the mempools
        assert t.height("regulator-prov") == before  # no block without 2/3 of the power
        t.start("regulator-nat", "plant")
        wait(lambda: all(_landed(t, n, P.digest(anchor)) for n in ("dispatch", "plant")),
             timeout=180, every=0.2, what="the pending anchor committed after the restart")
        status, doc = post(t.api("dispatch"), anchor)  # the fog's outbox sends it again
        assert (status, doc["error"]) == (409, "duplicate"), doc
        anchors = get(t.api("plant"), f"/v1/anchors?fog={fog.key.id_hex}")["anchors"]
        assert [a["digest"] for a in anchors] == [P.digest(anchor).hex()]
        fog.close()


def _landed(t: LocalNet, name: str, digest: bytes) -> bool:
    """The validator's API shows the transaction, with its proof (a 503 until CometBFT has
    indexed the block)."""
    try:
        get(t.api(name), f"/v1/tx/{digest.hex()}")
        return True
    except OSError:
        return False


def test_a_validator_computing_another_result_cannot_make_the_others_follow(
        tmp_path: Path) -> None:
    with local_net() as t:
        honest = ["dispatch", "regulator-prov", "regulator-nat"]
        t.start(*honest)
        r = supervise.start_app(t.net, t.net.validator("plant"), module="tests.kit.diverging_app")
        supervise.wait_socket(t.net, r)
        supervise.start_comet(t.net, r)
        t.running["plant"] = r
        t.wait_api()
        fog = FogSide(tmp_path)
        status, reg = post(t.api("dispatch"), t.register_tx("fog", fog.key))
        assert status == 200, reg
        landed = [post(t.api("regulator-prov"), _anchor(t, fog, n))[1] for n in (1, 2)]
        assert all("height" in d for d in landed), landed
        wait(lambda: _heads_agree(t, honest, landed[-1]["height"]), timeout=120, every=0.2,
             what="the honest validators at one state root")
        # the changed node computed its own root for the first block that changed anything
        honest_root = _root_at(t, "dispatch", reg["height"])
        assert honest_root is not None
        assert _root_at(t, "plant", reg["height"]) not in (None, honest_root)
        # CometBFT stops the changed node's consensus rather than follow its result: the
        # first block the others commit carries their app hash, which it cannot accept
        log = t.net.root / "plant" / "cometbft.log"
        wait(lambda: "wrong Block.Header.AppHash" in log.read_text(errors="replace"),
             timeout=120, every=0.2, what="the changed validator's consensus failure")
        assert "CONSENSUS FAILURE" in log.read_text(errors="replace")
        stuck = t.height("plant")
        status, doc = post(t.api("regulator-nat"), _anchor(t, fog, 3))
        assert status == 200, doc  # the three honest validators go on
        assert doc["height"] > stuck and t.height("plant") == stuck
        fog.close()


def _root_at(t: LocalNet, name: str, height: int) -> str | None:
    """The state root the validator's app stored for `height` (None: it has no such block)."""
    db = sqlite3.connect(f"file:{t.net.validator(name).app_dir(t.net.root)}/chain.db?mode=ro",
                         uri=True)
    try:
        row = db.execute("SELECT root FROM state_roots WHERE height = ?", (height,)).fetchone()
    finally:
        db.close()
    return None if row is None else bytes(row[0]).hex()


def test_all_four_restarted_at_once_keep_state_heights_and_app_hashes(tmp_path: Path) -> None:
    with local_net() as t:
        t.start()
        t.wait_api()
        fog = FogSide(tmp_path)
        assert post(t.api("dispatch"), t.register_tx("fog", fog.key))[0] == 200
        status, doc = post(t.api("plant"), _anchor(t, fog, 1))
        assert status == 200
        wait(lambda: _heads_agree(t, t.names, doc["height"]), timeout=120, every=0.2,
             what="four validators at one state root")
        before = get(t.api("dispatch"), "/v1/head")
        t.stop()
        t.start()
        t.wait_api()
        for n in t.names:
            head = get(t.api(n), "/v1/head")
            assert head["height"] >= before["height"]
            assert get(t.api(n), f"/v1/blocks/{before['height']}")["hash"] == before["hash"]
        status, doc = post(t.api("regulator-prov"), _anchor(t, fog, 2))
        assert status == 200, doc
        wait(lambda: _heads_agree(t, t.names, doc["height"]), timeout=120, every=0.2,
             what="four validators at one state root after the restart")
        fog.close()
