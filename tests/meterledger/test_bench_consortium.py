"""tools.bench_consortium end to end at its --quick size (marker `consortium`: it runs a real
four-validator network beside an embedded aggregator). Timings are never asserted: only that
every part of the comparison is printed and that no process it started is left behind."""

from __future__ import annotations

import subprocess

import pytest

from tools import bench_consortium

pytestmark = [pytest.mark.consortium, pytest.mark.timeout(600)]


def _ours() -> str:
    return subprocess.run(["pgrep", "-fa", "ml-bench-"], capture_output=True,
                          text=True).stdout


def test_the_quick_run_prints_the_comparison_and_stops_every_process(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_consortium.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for part in ("anchors committed per second", "interval close -> anchored aggregate",
                 "proof bundle's anchor section", "commit proof alone", "bounds (consortium)",
                 "CPU per committed anchor", "timeout_commit"):
        assert part in out, part
    rows = [line.split() for line in out.splitlines() if "|" in line]
    assert [r[0] for r in rows if r[0].isdigit()][:3] == ["1", "2", "3"]  # alone, --fogs 2,3
    assert sum(1 for line in out.splitlines() if line.rstrip().endswith("x")) >= 6  # ratios
    assert _ours() == ""  # validators and the embedded aggregator are gone
