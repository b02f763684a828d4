"""`make demo-consortium`, end to end: the demo's stack (mosquitto, a fog node, virtual meters)
with the dispatch chain on a real four-validator CometBFT network. The bundle it writes
verifies against the validators of its genesis.json, the four reach one app hash, and the
CLI names each break of a tampered bundle: a commit two signatures short, a commit for
another chain, a transaction claimed in a block that does not hold it. Ctrl-C, after the
bundle or before it, leaves no validator's process behind."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.backends.cometbft import network
from aggregator.chain.backends.cometbft.rpc import CometRPC
from meterledger.wire.cometbft_types import FLAG_ABSENT, FLAG_COMMIT
from tests.kit.fogkit import wait
from tests.kit.procs import LineReader, spawned

pytestmark = [pytest.mark.system, pytest.mark.consortium, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ABSENT = {"block_id_flag": FLAG_ABSENT, "validator_address": "",
          "timestamp": "0001-01-01T00:00:00Z", "signature": None}  # CometBFT's absent vote


def _demo(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tools.demo", "--consortium", "--meters", "5", "--intervals",
            "2", "--out", str(out), "--timeout", "240", *extra]


def _processes_under(folder: str) -> list[str]:
    """Command lines of live processes that name the network's folder (its validators'
    applications and CometBFT nodes)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if folder in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def _verify(bundle: Any, tmp: Path, genesis: Path, name: str) -> subprocess.CompletedProcess[str]:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(bundle))
    return subprocess.run([sys.executable, "-m", "tools.audit", "verify", str(path),
                           "--validators", str(genesis)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _status_rows(text: str) -> list[list[str]]:
    table = text.split("validator        up", 1)[1].split("\n\n", 1)[0]
    return [line.split() for line in table.splitlines()[1:]]


def _tampered(bundle: dict[str, Any], out: Path, tmp: Path, other_block: dict[str, Any]) -> None:
    genesis = out / "genesis.json"
    # two signatures removed (CometBFT's absent vote in their slots): 2 of 4 cannot commit
    short = copy.deepcopy(bundle)
    sigs = short["anchor"]["signed_header"]["commit"]["signatures"]
    present = [i for i, s in enumerate(sigs) if s["block_id_flag"] == FLAG_COMMIT]
    for i in present[: len(present) - 2]:
        sigs[i] = dict(ABSENT)
    run = _verify(short, tmp, genesis, "two-signatures")
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("rejected: commit: commit_insufficient_power"), run.stdout
    # the same bundle against a genesis of another chain id: the commit is not for it
    other = json.loads(genesis.read_text())
    other["chain_id"] += "-elsewhere"
    (tmp / "other-genesis.json").write_text(json.dumps(other))
    run = _verify(bundle, tmp, tmp / "other-genesis.json", "other-chain")
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("rejected: commit: commit_wrong_chain"), run.stdout
    # the anchor claimed in another block, genuinely committed by the validators, that
    # does not hold it: the commit checks, the inclusion proof does not
    moved = copy.deepcopy(bundle)
    moved["anchor"]["signed_header"] = other_block
    moved["anchor"]["block_height"] = int(other_block["header"]["height"])
    run = _verify(moved, tmp, genesis, "other-block")
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("rejected: tx_inclusion: tx_not_in_block"), run.stdout


def test_the_consortium_demo_verifies_against_the_validators_and_names_each_break(
        tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with spawned(_demo(out, "--keep-running"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT) as proc:
        reader, lines = LineReader(proc.stdout), list[str]()
        while not lines or not lines[-1].startswith("running until Ctrl-C"):
            lines.append(reader.next("the demo's next line", timeout=300))
            assert not lines[-1].startswith(("demo failed", "Traceback")), "\n".join(lines)
        text = "\n".join(lines)
        folder = re.search(r"^consortium  \S+: 4 validators \(.*\) in (\S+)$", text, re.M)
        assert folder is not None, text
        root = folder.group(1)
        assert "verified offline" in text and "committed by" in text, text
        # every validator up, at one height with one app hash, when the demo looked
        rows = _status_rows(text)
        assert [r[0] for r in rows] == [name for name, _ in network.PARTIES], text
        assert all(r[1] == "yes" for r in rows) and len({(r[2], r[4]) for r in rows}) == 1, text

        genesis = out / "genesis.json"
        cli = subprocess.run([sys.executable, "-m", "tools.audit", "verify",
                              str(out / "bundle.json"), "--validators", str(genesis)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and cli.stdout.startswith("verified:"), cli.stdout + cli.stderr
        assert re.search(r"committed by [34] of 4 validators", cli.stdout), cli.stdout
        bundle = json.loads((out / "bundle.json").read_text())
        assert bundle["version"] == 2
        # another block of the same chain, while the network still runs
        net = network.load(Path(root))
        height = int(bundle["anchor"]["block_height"])
        other = CometRPC(net.validators[1].rpc_url, timeout=10).commit(height - 1)
        _tampered(bundle, out, tmp_path, other["signed_header"])

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(120) == 0, "\n".join(lines)
        rest: list[str] = []
        while not rest or rest[-1] != "stopped cleanly":
            rest.append(reader.next("the demo's last lines", timeout=30))
    assert _processes_under(root) == []


def test_ctrl_c_before_the_bundle_stops_every_validator(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with spawned(_demo(out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT) as proc:
        reader, lines = LineReader(proc.stdout), list[str]()
        while not lines or not lines[-1].startswith("fog node"):
            lines.append(reader.next("the demo's next line", timeout=300))
            assert not lines[-1].startswith(("demo failed", "Traceback")), "\n".join(lines)
        folder = re.search(r" in (/\S+)$", next(x for x in lines if x.startswith("consortium")))
        assert folder is not None, lines
        root = folder.group(1)
        assert _processes_under(root) != []  # the network runs: four apps, four nodes
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
    wait(lambda: _processes_under(root) == [], timeout=10, what="no validator process left")
