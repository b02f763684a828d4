"""`make demo-market` end to end (docs/PROTOCOL.md section 27): a real broker, `python -m
aggregator run` on the fog's simulated clock, `python -m fog_node run` with the community's
meters as `market_meters`, virtual meters on the firmware (prosumers' PV, consumers'
households), and market agents over HTTP: access decided (one refused with its reasons),
continuous cycles matched over a congested feeder, three-signed, closed, and settled from
the fog's statements of the sellers' meters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_market_demo_trades_and_settles_from_metered_delivery(tmp_path: Path) -> None:
    out = tmp_path / "market"
    run = subprocess.run([sys.executable, "-m", "tools.demo_market", "--prosumers", "2",
                          "--consumers", "2", "--cycles", "2", "--compress", "90",
                          "--timeout", "300", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    lines = run.stdout.splitlines()
    assert sum(x.startswith("access      prosumer-") and "granted until" in x
               for x in lines) == 2
    assert "diesel-genset (220 kV): refused: SOURCE_NOT_ALLOWED, NATURE_NOT_ALLOWED, " \
           "SAFETY_NOT_MET, VOLTAGE_ABOVE_110KV" in run.stdout
    table = lines[lines.index(next(x for x in lines if x.strip().startswith("cycle contracts")))
                  + 1:]
    rows = [x.split() for x in table[:2]]
    assert all(int(r[1]) >= 1 and int(r[2]) > 0 for r in rows), rows
    # delivery is measured: what the fog stated of the PV meters, never more than contracted
    assert all(0 < int(r[3]) <= int(r[2]) for r in rows), rows
    assert any("closed:" in x for x in lines) and "stopped cleanly" in run.stdout
    # a trade proven offline, from its orders to its settlement
    assert "`python -m tools.audit trade` (exit 0):" in run.stdout
    assert any(x.startswith("  verified: contract ") for x in lines), run.stdout[-3000:]
    for log in ("fog.log", "aggregator.log"):
        assert "Traceback" not in (out / log).read_text()
