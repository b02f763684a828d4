"""`python -m aggregator` as real processes: init, register (directly and through a running
node), run with SIGTERM and kill -9 restarts (the chain stays intact, verify-chain passes,
nonces continue), and verify-chain naming the first tampered block or transaction."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
from collections.abc import Iterator
from http.client import HTTPException
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.app.state import MemoryState, block_state_root
from aggregator.chain.app.validator import Validator
from aggregator.chain.service.node import open_ledger
from aggregator.chain.store import SQLiteBlockStore
from meterledger import wire as P
from meterledger.wire import chain as C
from tests.kit.chainkit import T0, FogSide, http

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"aggregator listening on (http://127\.0\.0\.1:(\d+))\n")


def agg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aggregator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


class Runner:
    """`python -m aggregator run` subprocesses, killed at the end of the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> tuple[subprocess.Popen[str], str]:
        err = open(self.tmp / f"run-{len(self.procs)}.err", "w")
        proc = subprocess.Popen([sys.executable, "-m", "aggregator", "run", *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        err.close()
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = LISTENING.fullmatch(line)
        assert m, f"first line {line!r}; stderr: {(self.tmp / 'run-0.err').read_text()}"
        return proc, m.group(1)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    yield r
    r.close()


def init(d: Path) -> P.SigningKey:
    out = agg("init", "--data-dir", str(d))
    assert out.returncode == 0, out.stderr
    return P.SigningKey.from_bytes(bytes.fromhex((d / "dispatch.key").read_text()))


def sign(key: P.SigningKey, nonce: int, kind: str, body: dict[int, Any], chain: bytes) -> bytes:
    return P.sign1(key, C.tx(key.id, nonce, kind, body, T0, chain))


def nonce_of(url: str, pid: bytes) -> int:
    parts = http(url + "/v1/participants")[1]["participants"]
    return int(next(p["nonce"] for p in parts if p["id"] == pid.hex()))


def test_init_register_and_verify_without_a_running_node(tmp_path: Path) -> None:
    d = tmp_path / "agg"
    out = agg("init", "--data-dir", str(d), "--name", "dc-south")
    assert out.returncode == 0, out.stderr
    key = P.SigningKey.from_bytes(bytes.fromhex((d / "dispatch.key").read_text()))
    assert out.stdout.split() == ["chain", key.id_hex, "dispatch", "pub",
                                  key.public_key.raw.hex()]
    assert (d / "dispatch.key").stat().st_mode & 0o777 == 0o600
    assert (d / "dispatch.pub").read_text() == key.public_key.raw.hex() + "\n"
    again = agg("init", "--data-dir", str(d))
    assert again.returncode == 2 and "exists already" in again.stderr
    fog = P.SigningKey.generate()
    out = agg("register", "--data-dir", str(d), "--role", "fog", "--pub",
              fog.public_key.raw.hex(), "--name", "fog-1")
    assert out.returncode == 0 and f"registered fog {fog.id_hex} in block 1 at index 0" \
        in out.stdout, out.stderr
    out = agg("register", "--data-dir", str(d), "--role", "plant", "--pub",
              fog.public_key.raw.hex())
    assert out.returncode == 2 and "already_registered" in out.stderr
    out = agg("register", "--data-dir", str(d), "--role", "fog", "--pub", "04abcd")
    assert out.returncode == 2 and "--pub" in out.stderr
    out = agg("verify-chain", "--data-dir", str(d))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == (f"chain {key.id_hex} ok: 2 blocks (0..1), 2 transactions, "
                          f"2 participants, 0 anchors; sealer {key.id_hex} (trusted key)\n")
    ledger = open_ledger(d, lambda: T0)
    try:
        assert [(p.role, p.name, p.nonce) for p in ledger.participants()] == [
            ("dispatch", "dc-south", 2), ("fog", "fog-1", 0)]
    finally:
        ledger.close()
    assert agg("verify-chain").returncode == 2  # needs --data-dir or --chain


def test_sigterm_and_kill_9_restarts_keep_the_chain(tmp_path: Path, runner: Runner) -> None:
    d = tmp_path / "agg"
    key = init(d)
    chain = key.id
    proc, url = runner.start("--data-dir", str(d), "--http-port", "0")
    second = agg("run", "--data-dir", str(d), "--http-port", "0")
    assert second.returncode == 2 and "another aggregator is running" in second.stderr
    fs = FogSide(tmp_path)
    fogs = [fs.key] + [P.SigningKey.generate() for _ in range(3)]
    # register through the running node: found from its data dir, then by --chain URL
    for i, fog in enumerate(fogs):
        extra = ["--chain", url] if i % 2 else []
        out = agg("register", "--data-dir", str(d), "--role", "fog", "--pub",
                  fog.public_key.raw.hex(), *extra)
        assert out.returncode == 0, out.stderr
    fs.grow(5)
    assert http(url + "/v1/tx", "POST", sign(fs.key, 1, "anchor", fs.anchor(), chain))[0] == 200
    assert agg("verify-chain", "--chain", url).returncode == 0
    assert agg("verify-chain", "--data-dir", str(d)).returncode == 0  # beside the writer
    # SIGTERM: a clean stop
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "aggregator stopped cleanly" in stdout
    assert not (d / "aggregator.url").exists()
    out = agg("verify-chain", "--data-dir", str(d))
    assert out.returncode == 0 and "6 blocks (0..5), 6 transactions" in out.stdout, out.stdout
    # restart from a config file: the nonces continue
    conf = tmp_path / "agg.toml"
    conf.write_text(f'[aggregator]\ndata_dir = "{d}"\nhttp_port = 0\n')
    proc, url = runner.start("--config", str(conf))
    assert http(url + "/v1/head")[1]["height"] == 5
    assert nonce_of(url, key.id) == 5 and nonce_of(url, fs.key.id) == 1
    status, doc = http(url + "/v1/tx", "POST", sign(fs.key, 1, "fault", C.fault_body(
        "k", "replayed nonce", T0, "none"), chain))
    assert (status, doc["error"]) == (400, "nonce_reused")
    fs.grow(3)
    status, doc = http(url + "/v1/tx", "POST", sign(fs.key, 2, "anchor", fs.anchor(), chain))
    assert status == 200 and doc["height"] == 6
    # kill -9 while several fogs keep sending
    acked: dict[bytes, list[tuple[bytes, dict[str, Any]]]] = {f.id: [] for f in fogs}
    enough = threading.Semaphore(0)
    refusals: list[Any] = []

    start: dict[bytes, int] = {}

    def send(fog: P.SigningKey) -> None:
        n = start[fog.id] = nonce_of(url, fog.id)
        while True:
            n += 1
            raw = sign(fog, n, "fault", C.fault_body("k", f"burst {n}", T0, "none"), chain)
            try:
                status, doc = http(url + "/v1/tx", "POST", raw)
            except (urllib.error.URLError, OSError, HTTPException):
                return  # the node is gone (possibly in the middle of an answer)
            if status != 200:  # a refusal would be a bug: reported below, not lost
                refusals.append(doc)
                enough.release()
                return
            acked[fog.id].append((raw, doc))
            enough.release()

    threads = [threading.Thread(target=send, args=(f,), daemon=True) for f in fogs]
    for t in threads:
        t.start()
    for _ in range(40):  # 40 acknowledged transactions, then the power goes
        assert enough.acquire(timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads) and refusals == []
    proc, url = runner.start("--data-dir", str(d), "--http-port", "0")
    for fog in fogs:
        on_chain = nonce_of(url, fog.id)
        # every acknowledged one is on the chain, and at most the one in flight besides
        assert start[fog.id] + len(acked[fog.id]) <= on_chain <= start[fog.id] + len(
            acked[fog.id]) + 1
        for raw, doc in acked[fog.id]:
            status, got = http(url + f"/v1/tx/{doc['digest']}")
            assert status == 200 and (got["height"], got["index"], got["tx"]) == (
                doc["height"], doc["index"], raw.hex())
        # the fog goes on with its next nonce
        raw = sign(fog, on_chain + 1, "fault", C.fault_body("k", "after", T0, "none"), chain)
        assert http(url + "/v1/tx", "POST", raw)[0] == 200
    out = agg("verify-chain", "--chain", url, "--pub", key.public_key.raw.hex())
    assert out.returncode == 0 and "(trusted key)" in out.stdout, out.stdout
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    out = agg("verify-chain", "--data-dir", str(d))
    assert out.returncode == 0, out.stdout
    fs.close()


# --- tampering ---------------------------------------------------------------------------------
@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, P.SigningKey]:
    """A stopped chain: genesis, a fog registered (block 1), two faults (block 2, 3), and a
    block 4 holding an anchor and a fault."""
    d = tmp_path / "agg"
    key = init(d)
    fs = FogSide(tmp_path)
    ledger = open_ledger(d, lambda: T0)
    try:
        ledger.submit(sign(key, 2, "register", C.register_body("fog", fs.key.public_key.raw,
                                                               "fog-1"), key.id))
        for n in (1, 2):
            ledger.submit(sign(fs.key, n, "fault", C.fault_body("k", f"f{n}", T0, "a"), key.id))
        fs.grow(4)
        txs = [sign(fs.key, 3, "anchor", fs.anchor(), key.id),
               sign(fs.key, 4, "fault", C.fault_body("k", "f4", T0, "a"), key.id)]
        prev = ledger.head().hash
    finally:
        ledger.close()
        fs.close()
    # two transactions in one block, sealed the way the ledger does it
    store = SQLiteBlockStore(d / "chain.db")
    try:
        stage, effects = MemoryState(store), []
        for raw in txs:
            effects.append(Validator(key.id).check(raw, stage))
            stage.apply(effects[-1])
        root = store.state_root(3)
        assert root is not None
        store.append(4, P.sign1(key, C.block_header(key.id, 4, prev, C.tx_root(txs), 2, T0,
                                                    key.id)), effects,
                     block_state_root(root, 4, effects))
    finally:
        store.close()
    assert agg("verify-chain", "--data-dir", str(d)).returncode == 0
    return d, key


def tamper(d: Path, sql: str, args: tuple[Any, ...]) -> subprocess.CompletedProcess[str]:
    db = sqlite3.connect(d / "chain.db")
    db.execute(sql, args)
    db.commit()
    db.close()
    return agg("verify-chain", "--data-dir", str(d))


def flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]


def read(d: Path, sql: str, args: tuple[Any, ...]) -> Any:
    db = sqlite3.connect(d / "chain.db")
    try:
        return db.execute(sql, args).fetchone()[0]
    finally:
        db.close()


def failed(out: subprocess.CompletedProcess[str], where: str, reason: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.startswith(f"verify-chain FAILED: {where}: {reason}: "), out.stdout


def test_verify_chain_names_a_tampered_transaction(sample: tuple[Path, P.SigningKey]) -> None:
    d, _ = sample
    raw = read(d, "SELECT raw FROM txs WHERE height = 4 AND idx = 1", ())
    out = tamper(d, "UPDATE txs SET raw = ? WHERE height = 4 AND idx = 1", (flip(raw, len(raw) - 1),))
    failed(out, "block 4 tx 1", "bad_signature")
    # a byte of the payload instead (the fault's detail "f4" -> "f5"), still valid CBOR
    i = raw.index(b"f4") + 1
    out = tamper(d, "UPDATE txs SET raw = ? WHERE height = 4 AND idx = 1", (flip(raw, i),))
    failed(out, "block 4 tx 1", "bad_signature")


def test_verify_chain_names_a_tampered_header(sample: tuple[Path, P.SigningKey]) -> None:
    d, key = sample
    header = read(d, "SELECT header FROM blocks WHERE height = 2", ())
    failed(tamper(d, "UPDATE blocks SET header = ? WHERE height = 2", (flip(header, len(header) - 5),)),
           "block 2", "bad_signature")
    # signed by another key
    other = P.SigningKey.generate()
    f = P.parse(header).fields
    forged = P.sign1(other, {**f, 1: other.id})
    failed(tamper(d, "UPDATE blocks SET header = ? WHERE height = 2", (forged,)),
           "block 2", "kid_mismatch")
    # the sealer's own key, but the header does not match the block
    for change, reason in (({4: b"\x00" * 32}, "bad_txroot"), ({3: b"\x00" * 32}, "bad_prev"),
                           ({5: 3}, "bad_ntx"), ({2: 7}, "bad_height"),
                           ({6: T0 - 1}, "t_backwards")):
        resigned = P.sign1(key, {**f, **change})
        failed(tamper(d, "UPDATE blocks SET header = ? WHERE height = 2", (resigned,)),
               "block 2", reason)
    out = tamper(d, "UPDATE blocks SET header = ? WHERE height = 2", (header,))
    assert out.returncode == 0, out.stdout  # restored


def test_verify_chain_finds_removed_and_moved_data(sample: tuple[Path, P.SigningKey]) -> None:
    d, _ = sample
    saved = d.parent / "saved.db"
    shutil.copy(d / "chain.db", saved)
    failed(tamper(d, "DELETE FROM txs WHERE height = 4 AND idx = 0", ()), "block 4", "bad_ntx")
    shutil.copy(saved, d / "chain.db")
    failed(tamper(d, "DELETE FROM blocks WHERE height = 3", ()), "block 3", "missing_block")
    shutil.copy(saved, d / "chain.db")
    # the derived state the running node validates with
    failed(tamper(d, "UPDATE participants SET nonce = 9 WHERE role = 'fog'", ()),
           "derived state", "derived_state")
    shutil.copy(saved, d / "chain.db")
    failed(tamper(d, "UPDATE anchors SET size = 3", ()), "derived state", "derived_state")
    shutil.copy(saved, d / "chain.db")
    # a chain sealed by a key other than the trusted one
    out = agg("verify-chain", "--data-dir", str(d), "--pub",
              P.SigningKey.generate().public_key.raw.hex())
    failed(out, "block 0 tx 0", "untrusted_sealer")


def test_verify_chain_checks_every_stored_state_root(sample: tuple[Path, P.SigningKey]) -> None:
    d, _ = sample
    root = read(d, "SELECT root FROM state_roots WHERE height = 3", ())
    assert len(root) == 32
    failed(tamper(d, "UPDATE state_roots SET root = ? WHERE height = 3", (flip(root, 0),)),
           "block 3", "state_root")
    assert tamper(d, "UPDATE state_roots SET root = ? WHERE height = 3", (root,)).returncode == 0


def test_a_chain_without_state_roots_gets_them_by_replay(sample: tuple[Path, P.SigningKey]) -> None:
    # a chain written before state roots existed: the ledger computes them once on opening,
    # equal to what the roots sealed block by block were
    d, _ = sample
    db = sqlite3.connect(d / "chain.db")
    sealed = db.execute("SELECT height, root FROM state_roots ORDER BY height").fetchall()
    db.execute("DROP TABLE state_roots")
    db.commit()
    db.close()
    assert [h for h, _ in sealed] == [0, 1, 2, 3, 4]
    ro = SQLiteBlockStore(d / "chain.db", readonly=True)
    try:
        assert ro.state_root(4) is None  # read-only: nothing to fill in, nothing invented
    finally:
        ro.close()
    ledger = open_ledger(d, lambda: float(T0))
    try:
        assert ledger.head().state_root == sealed[-1][1]
    finally:
        ledger.close()
    db = sqlite3.connect(d / "chain.db")
    assert db.execute("SELECT height, root FROM state_roots ORDER BY height").fetchall() == sealed
    db.close()
    assert agg("verify-chain", "--data-dir", str(d)).returncode == 0
