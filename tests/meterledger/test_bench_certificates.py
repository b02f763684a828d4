"""tools.bench_certificates at its --quick size: both plant sizes go through the embedded
chain and both tables are printed. Timings are never asserted: only that every figure is
there, and the counts the run is built to produce (2 fogs x 5 plants x 4 intervals)."""

from __future__ import annotations

import pytest

from tools import bench_certificates

pytestmark = pytest.mark.timeout(300)


def _rows(out: str, plant: str) -> list[list[str]]:
    """The figures of each table row of `plant` (throughput first, then bytes)."""
    return [line[len(plant):].split() for line in out.splitlines() if line.startswith(plant)]


def _num(text: str) -> float:
    return float(text.rstrip("x").replace(",", ""))


def test_the_quick_run_prints_throughput_and_bytes_for_both_plants(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_certificates.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for part in ("certs/s", "plants@900s", "stmt B/MWh", "anchor B/MWh", "cert rec B/cert",
                 "measured in"):
        assert part in out, part
    for plant, certs, mwh in (("10 MW PV", 100, 100.0), ("100 kW PV", 0, 1.0)):
        speed, size = _rows(out, plant)
        assert len(speed) == 11 and len(size) == 6, (speed, size)
        anchors, statements, issued, certified = (_num(x) for x in speed[:4])
        assert (statements, issued, certified) == (40, certs, mwh) and anchors >= 8
        assert speed[6].endswith("x")  # the cost against the baseline, a ratio
        rates = [_num(x) for i, x in enumerate(speed[4:], 4) if i != 7 or certs]
        assert all(r > 0 for r in rates), speed  # certs/s is 0 where none was issued
        assert 100 < _num(size[0]) < 300  # a statement's bytes in an anchor
        assert _num(size[1]) > 0 and _num(size[2]) >= _num(size[1])
        assert (size[3] == "-") == (certs == 0)
