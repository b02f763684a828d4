"""Short real fuzzing runs (the `fuzz` extra, which `make setup` installs): every target for
a fixed number of inputs under atheris, coverage-guided and instrumented, and each HTTP API
for a few schemathesis examples. Every run must end without a finding."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools import fuzz
from tools.fuzz import api

ROOT = Path(__file__).resolve().parents[2]
RUNS = 400


@pytest.mark.parametrize("name", list(fuzz.MODULES))
def test_atheris_runs_the_target_without_a_finding(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="the fuzz extra is not installed")
    out = subprocess.run([sys.executable, "-m", "tools.fuzz", "--target", name, "--engine",
                          "atheris", "--runs", str(RUNS), "--seed", "7", "--findings",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    executed = re.search(r"stat::number_of_executed_units: (\d+)", out.stderr)
    assert executed and int(executed[1]) >= RUNS, out.stderr[-2000:]  # runs, and the seeds
    assert "cov: " in out.stderr  # instrumented: libFuzzer saw coverage
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("service", api.SERVICES)
def test_schemathesis_finds_no_server_error(service: str) -> None:
    pytest.importorskip("schemathesis", reason="the fuzz extra is not installed")
    assert api.run(service, seconds=20, max_examples=5, seed=7) == 0
