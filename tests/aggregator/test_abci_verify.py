"""verify-chain on a consortium validator's data dir (consortium.json beside chain.db): a
chain made in-process through the ABCI app (tests/aggregator/test_abci.py's socket client),
replayed from genesis; every tampering named by its block and stable reason; a running
validator verified read-only; and the same over a validator's HTTP API."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aggregator.__main__ import main
from aggregator.chain.backends.cometbft.app import BlockRecord
from aggregator.chain.backends.cometbft.ledger import CometLedger
from aggregator.chain.backends.cometbft.rpc import CometRPC
from aggregator.chain.service.api import AggregatorAPI
from meterledger import wire as P
from meterledger.infra import datadir
from meterledger.wire import chain as C
from meterledger.wire.cometbft import genesis_app_state
from tests.aggregator.test_abci import CHAIN_NAME, T0, Keys, block_hash, node_at
from tests.kit.chainkit import FogSide

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Validator:
    root: Path   # the network's folder (genesis.json)
    dir: Path    # the validator's data dir
    keys: Keys
    hashes: list[bytes]  # the app hash after each block

    @property
    def db(self) -> Path:
        return self.dir / "chain.db"


def make_validator(tmp: Path, keys: Keys) -> Validator:
    """A stopped validator's data dir: genesis; a fog and a regulator registered (block 1);
    an empty block 2; an anchor, a fault and a refused transaction (block 3); a fault
    (block 4)."""
    root = tmp / "net"
    d = root / "plant" / "app"
    d.mkdir(parents=True)
    (root / "genesis.json").write_text(json.dumps({
        "chain_id": CHAIN_NAME, "initial_height": "1",
        "app_state": genesis_app_state(keys.genesis)}))
    (d / "consortium.json").write_text(json.dumps({
        "name": "plant", "rpc": "http://127.0.0.1:9", "socket": str(root / "plant.sock"),
        "network": str(root)}))
    fog = FogSide(tmp)
    try:
        fog.grow(3)
        anchor = P.sign1(fog.key, C.tx(fog.key.id, 1, C.ANCHOR, fog.anchor(), T0, keys.chain))
        blocks = [[keys.register(2, fog.key), keys.register(3, role="regulator")], [],
                  [anchor, keys.fault(fog.key, 2), keys.fault(fog.key, 2)],
                  [keys.fault(fog.key, 3)]]
    finally:
        fog.close()
    with node_at(d / "chain.db") as n:
        hashes = [n.init(keys).app_hash]
        for h, txs in enumerate(blocks, 1):
            hashes.append(n.block(h, txs).app_hash)
    return Validator(root, d, keys, hashes)


@pytest.fixture
def v(tmp_path: Path) -> Validator:
    return make_validator(tmp_path, Keys.new())


def verify(d: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["verify-chain", "--data-dir", str(d), *extra])
    return code, capsys.readouterr().out


def tamper(v: Validator, sql: str, args: tuple[Any, ...] = ()) -> None:
    db = sqlite3.connect(v.db)
    db.execute(sql, args)
    db.commit()
    db.close()


def read(v: Validator, sql: str, args: tuple[Any, ...] = ()) -> Any:
    db = sqlite3.connect(v.db)
    try:
        return db.execute(sql, args).fetchone()[0]
    finally:
        db.close()


def failed(out: tuple[int, str], where: str, reason: str) -> None:
    code, text = out
    assert code == 1, text
    assert text.startswith(f"verify-chain FAILED: {where}: {reason}: "), text


def test_verify_chain_of_a_stopped_validator(v: Validator) -> None:
    out = subprocess.run([sys.executable, "-m", "aggregator", "verify-chain", "--data-dir",
                          str(v.dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == (
        f"consortium chain {v.keys.chain.hex()} ({CHAIN_NAME}) ok: 5 blocks (0..4), 6 "
        f"transactions, 3 participants, 1 anchors, state root {v.hashes[-1].hex()}; "
        f"dispatch key {v.keys.chain.hex()} (key from genesis, not pinned); every state root "
        "and the derived state checked\n")


def test_the_dispatch_key_is_pinned_by_pub_or_the_data_dirs_dispatch_pub(
        v: Validator, capsys: pytest.CaptureFixture[str]) -> None:
    pub = v.keys.dispatch.public_key.raw.hex()
    code, text = verify(v.dir, "--pub", pub, capsys=capsys)
    assert code == 0 and "(trusted key)" in text, text
    failed(verify(v.dir, "--pub", P.SigningKey.generate().public_key.raw.hex(), capsys=capsys),
           "block 0 tx 0", "untrusted_sealer")
    (v.dir / "dispatch.pub").write_text(P.SigningKey.generate().public_key.raw.hex() + "\n")
    failed(verify(v.dir, capsys=capsys), "block 0 tx 0", "untrusted_sealer")
    (v.dir / "dispatch.pub").write_text(pub + "\n")
    code, text = verify(v.dir, capsys=capsys)
    assert code == 0 and "(trusted key)" in text, text


def test_verify_chain_names_a_tampered_state_root_tx_or_record(
        v: Validator, capsys: pytest.CaptureFixture[str]) -> None:
    saved = v.dir.parent / "saved.db"
    shutil.copy(v.db, saved)

    def restore() -> None:
        shutil.copy(saved, v.db)
        assert verify(v.dir, capsys=capsys)[0] == 0

    root = read(v, "SELECT root FROM state_roots WHERE height = 3")
    assert root == v.hashes[3]
    tamper(v, "UPDATE state_roots SET root = ? WHERE height = 3", (bytes(32),))
    failed(verify(v.dir, capsys=capsys), "block 3", "state_root")
    restore()
    tamper(v, "DELETE FROM state_roots WHERE height = 2")
    failed(verify(v.dir, capsys=capsys), "block 2", "state_root")
    restore()
    raw = read(v, "SELECT raw FROM txs WHERE height = 3 AND idx = 1")
    tamper(v, "UPDATE txs SET raw = ? WHERE height = 3 AND idx = 1",
           (raw[:-1] + bytes([raw[-1] ^ 1]),))
    failed(verify(v.dir, capsys=capsys), "block 3 tx 1", "bad_signature")
    restore()
    tamper(v, "DELETE FROM txs WHERE height = 4")
    failed(verify(v.dir, capsys=capsys), "block 4", "bad_ntx")
    restore()
    tamper(v, "DELETE FROM blocks WHERE height = 2")
    failed(verify(v.dir, capsys=capsys), "block 2", "missing_block")
    restore()
    tamper(v, "UPDATE blocks SET hash = ? WHERE height = 1", (block_hash(7),))
    failed(verify(v.dir, capsys=capsys), "block 1", "bad_block_hash")
    restore()
    header = read(v, "SELECT header FROM blocks WHERE height = 3")
    rec = BlockRecord.decode(header)
    for change, reason in (({"height": 4}, "bad_height"), ({"chain": b"\x07" * 8}, "wrong_chain"),
                           ({"time_s": T0}, "t_backwards"), ({"ntx": 3}, "bad_ntx"),
                           ({"hash": b""}, "bad_block_hash")):
        forged = BlockRecord(**{**rec.__dict__, **change}).encode()
        tamper(v, "UPDATE blocks SET header = ? WHERE height = 3", (forged,))
        failed(verify(v.dir, capsys=capsys), "block 3", reason)
    for bad in (b"\xa0", P.encode({**P.decode(header), 4: "two"})):
        tamper(v, "UPDATE blocks SET header = ? WHERE height = 3", (bad,))
        failed(verify(v.dir, capsys=capsys), "block 3", "bad_record")
    restore()


def test_verify_chain_checks_the_derived_state_and_the_networks_genesis(
        v: Validator, capsys: pytest.CaptureFixture[str]) -> None:
    tamper(v, "UPDATE participants SET nonce = 9 WHERE role = 'fog'")
    failed(verify(v.dir, capsys=capsys), "derived state", "derived_state")
    tamper(v, "UPDATE participants SET nonce = 3 WHERE role = 'fog'")
    tamper(v, "UPDATE anchors SET size = 1")
    failed(verify(v.dir, capsys=capsys), "derived state", "derived_state")
    tamper(v, "UPDATE anchors SET size = 3")
    assert verify(v.dir, capsys=capsys)[0] == 0
    # block 0 must be the genesis the network's validators started from
    g = v.root / "genesis.json"
    good = g.read_text()
    g.write_text(json.dumps({**json.loads(good), "chain_id": "meterledger-other"}))
    failed(verify(v.dir, capsys=capsys), "block 0", "bad_genesis")
    other = Keys.new()
    g.write_text(json.dumps({**json.loads(good), "app_state": genesis_app_state(other.genesis)}))
    failed(verify(v.dir, capsys=capsys), "block 0", "bad_genesis")
    g.unlink()  # a data dir without its network's folder: the chain's own genesis only
    assert verify(v.dir, capsys=capsys)[0] == 0


def test_verify_chain_of_a_running_validator_opens_it_read_only(
        v: Validator, capsys: pytest.CaptureFixture[str]) -> None:
    with node_at(v.db) as n:  # the app serves, its store open for writing
        held = datadir.lock(v.dir / "aggregator.lock")  # as `aggregator run` holds it
        assert held is not None
        try:
            before = (v.db.stat().st_mtime_ns, n.store.height())
            code, text = verify(v.dir, capsys=capsys)
            assert code == 0, text
            assert text.rstrip().endswith("every state root checked; derived state not "
                                          "checked: the validator is running")
            assert (v.db.stat().st_mtime_ns, n.store.height()) == before
            n.block(5, [v.keys.register(4)])  # it goes on beside the verifier
            code, text = verify(v.dir, capsys=capsys)
            assert code == 0 and "6 blocks (0..5)" in text, text
            # the derived state moves on while it runs: only the blocks and roots count
            tamper(v, "UPDATE state_roots SET root = ? WHERE height = 5", (bytes(32),))
            failed(verify(v.dir, capsys=capsys), "block 5", "state_root")
        finally:
            held.close()


@pytest.fixture
def served(v: Validator) -> Iterator[tuple[Validator, str]]:
    with node_at(v.db) as n:
        ledger = CometLedger(n.app, CometRPC("http://127.0.0.1:9"))
        api = AggregatorAPI(ledger, time.time)
        port = api.start("127.0.0.1", 0)
        try:
            yield v, f"http://127.0.0.1:{port}"
        finally:
            api.stop()
            ledger.close()


def test_verify_chain_over_a_validators_http_api(
        served: tuple[Validator, str], capsys: pytest.CaptureFixture[str]) -> None:
    v, url = served
    assert main(["verify-chain", "--chain", url]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"consortium chain {v.keys.chain.hex()} ({CHAIN_NAME}) ok: 5 blocks")
    assert text.rstrip().endswith("the head's state root checked (the API serves no other)")
    assert main(["verify-chain", "--chain", url, "--pub",
                 P.SigningKey.generate().public_key.raw.hex()]) == 1
    assert "block 0 tx 0: untrusted_sealer" in capsys.readouterr().out
    # the head's state root must be the replayed one
    tamper(v, "UPDATE state_roots SET root = ? WHERE height = 4", (bytes(32),))
    assert main(["verify-chain", "--chain", url]) == 1
    assert capsys.readouterr().out.startswith("verify-chain FAILED: block 4: state_root: ")
