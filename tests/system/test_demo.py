"""The README's first command, end to end: a real mosquitto (or the embedded amqtt broker),
`python -m aggregator run`, `python -m fog_node run` and virtual meters running the firmware
app -> readings logged, checkpoints anchored -> a proof bundle that verifies offline with the
CLI. Run twice on the same output directory, as a newcomer would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from meterledger import wire as P
from tools import audit

ROOT = Path(__file__).resolve().parents[2]


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.demo", "--meters", "5", "--intervals",
                           "2", "--out", str(out), "--timeout", "120", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _check_output(out: Path, run: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert run.returncode == 0, run.stdout + run.stderr
    assert "stopped cleanly" in run.stdout
    bundle = json.loads((out / "bundle.json").read_text())
    trust = (out / "dispatch.pub").read_text().strip()
    r = audit.verify_bundle(bundle, [P.PublicKey(bytes.fromhex(trust))])
    assert r.seq == 1
    cli = subprocess.run([sys.executable, "-m", "tools.audit", "verify", str(out / "bundle.json"),
                          "--trust", trust], cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.startswith("verified:")
    # the table: 5 meters, 2 intervals with readings anchored, nothing rejected
    row = run.stdout.split("rejected\n", 1)[1].split("\n", 1)[0].split()
    meters, readings, logged, checkpoints, anchors, intervals, rejected = map(int, row)
    assert meters == 5 and readings >= 10 and logged > 0
    assert anchors >= 1 and checkpoints >= intervals >= 2 and rejected == 0
    return bundle


def test_demo_runs_twice_and_leaves_a_bundle_that_verifies(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    first = _check_output(out, _demo(out, "--broker", "mosquitto"))
    second = _check_output(out, _demo(out, "--broker", "mosquitto"))
    assert first["fog_pub"] != second["fog_pub"]  # each run starts afresh


def test_demo_on_the_embedded_broker_when_mosquitto_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    run = _demo(out, "--broker", "amqtt")
    assert "amqtt (embedded)" in run.stdout
    _check_output(out, run)
