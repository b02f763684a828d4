"""Meters whose births a fog saw but nobody enrolled (a lab broker lets them in): `meterledger
fog devices` lists them as pending, `fog enroll --dev ID` takes one in by its id, and
`fog enroll --all-pending` the rest, asking first (and refusing to guess without a terminal
unless --yes). Real processes: mosquitto, the fog node, virtual meters."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hardware.broker import Mosquitto
from tests.kit.fogkit import wait
from tests.kit.procs import spawned

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[2]


def ml(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterledger.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_pending_meters_are_listed_and_enrolled_by_id_or_all_at_once(tmp_path: Path) -> None:
    fog_dir, meters = tmp_path / "fog", tmp_path / "meters"
    init = ml("fog", "init", "--data-dir", str(fog_dir))
    assert init.returncode == 0, init.stderr
    fog_id = re.search(r"fog id ([0-9a-f]{16})", init.stdout).group(1)  # type: ignore[union-attr]
    fog_log = tmp_path / "fog.log"
    with Mosquitto(tmp_path / "broker") as broker, open(fog_log, "w") as flog, \
            spawned([sys.executable, "-m", "fog_node", "run", "--data-dir", str(fog_dir),
                     "--mqtt-security", "lab", "--mqtt-port", str(broker.port),
                     "--http-port", "0"], cwd=ROOT, stdout=flog, stderr=subprocess.STDOUT), \
            spawned([sys.executable, "-m", "hardware.virtual_meter", "--count", "3",
                     "--data-dir", str(meters), "--mqtt-host", "127.0.0.1", "--mqtt-port",
                     str(broker.port), "--fog", fog_id], cwd=ROOT,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        wait(lambda: "running:" in fog_log.read_text(), timeout=120, what="the fog")
        url = "http://127.0.0.1:" + re.search(  # type: ignore[union-attr]
            r"http 127\.0\.0\.1:(\d+)", fog_log.read_text()).group(1)

        def listing() -> dict[str, list[dict[str, str]]]:
            r = ml("fog", "devices", "--data-dir", str(fog_dir), "--url", url,
                   "--format", "json")
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        wait(lambda: len(listing()["pending"]) == 3, timeout=120, what="three births")
        table = ml("fog", "devices", "--data-dir", str(fog_dir), "--url", url).stdout
        assert table.count(" pending ") == 3 and "0 enrolled, 0 revoked, 3 pending" in table
        first, *rest = sorted(p["dev"] for p in listing()["pending"])
        one = ml("fog", "enroll", "--data-dir", str(fog_dir), "--url", url, "--dev", first)
        assert one.returncode == 0 and "1 decision(s) queued" in one.stdout, one.stderr
        unknown = ml("fog", "enroll", "--data-dir", str(fog_dir), "--url", url,
                     "--dev", "00" * 8)
        assert unknown.returncode == 2 and "not pending" in unknown.stderr
        wait(lambda: [d["dev"] for d in listing()["devices"]] == [first], timeout=120,
             what="the first meter enrolled")
        asks = ml("fog", "enroll", "--data-dir", str(fog_dir), "--url", url, "--all-pending")
        assert asks.returncode == 2 and "--yes" in asks.stderr  # no terminal to ask at
        assert len(listing()["pending"]) == 2
        done = ml("fog", "enroll", "--data-dir", str(fog_dir), "--url", url, "--all-pending",
                  "--yes")
        assert done.returncode == 0 and "2 decision(s) queued" in done.stdout, done.stderr
        wait(lambda: sorted(d["dev"] for d in listing()["devices"]) == sorted([first, *rest]),
             timeout=120, what="every meter enrolled")
        assert listing()["pending"] == []
