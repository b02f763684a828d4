"""The newcomer's first trap (issue 14): a fog on real time and virtual meters on a compressed
clock in 2027. Every reading is refused (`future_t`); both sides must say so, once, with the
reason and what to do: the fog logs the first refusal per meter with a hint (then at most a
summary a minute), the meter says it gets no acks and why it thinks so. Real processes: a
mosquitto, `python -m fog_node run`, `python -m hardware.virtual_meter`."""

from __future__ import annotations

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


def _py(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_meters_ahead_of_the_fog_are_refused_and_both_sides_say_why(tmp_path: Path) -> None:
    fog_dir, meters = tmp_path / "fog", tmp_path / "meters"
    init = _py("fog_node", "init", "--data-dir", str(fog_dir))
    fog_id = re.search(r"fog id ([0-9a-f]{16})", init).group(1)  # type: ignore[union-attr]
    fog_pub = re.search(r"fog pub ([0-9a-f]{130})", init).group(1)  # type: ignore[union-attr]
    fog_log, meter_log = tmp_path / "fog.log", tmp_path / "meters.log"
    with Mosquitto(tmp_path / "broker") as broker, \
            open(fog_log, "w") as flog, open(meter_log, "w") as mlog, \
            spawned([sys.executable, "-m", "fog_node", "run", "--data-dir", str(fog_dir),
                     "--mqtt-security", "lab", "--mqtt-port", str(broker.port),
                     "--http-port", "0"], cwd=ROOT, stdout=flog, stderr=subprocess.STDOUT), \
            spawned([sys.executable, "-m", "hardware.virtual_meter", "--count", "2",
                     "--data-dir", str(meters), "--mqtt-host", "127.0.0.1", "--mqtt-port",
                     str(broker.port), "--fog", fog_id, "--fog-pub", fog_pub,
                     "--sim-compress", "900"], cwd=ROOT, stdout=mlog,
                    stderr=subprocess.STDOUT):
        wait(lambda: (meters / "provisioning.json").is_file() and "running:" in
             fog_log.read_text(), timeout=120, what="the fog and the meters to start")
        _py("fog_node", "enroll", "--data-dir", str(fog_dir), "--file",
            str(meters / "provisioning.json"))
        # the meter's side: no acks, and the clock named as the likely cause
        wait(lambda: meter_log.read_text().count("none acked") >= 2, timeout=240,
             what="the meters to say they get no acks")
        # the fog's side: the first future_t of each meter, with the times and a hint
        wait(lambda: fog_log.read_text().count("(future_t)") >= 2, timeout=240,
             what="the fog to log the refusals")
        # meters keep sending (a backlog of 2027 readings): no new line per refusal
        port = re.search(r"http 127\.0\.0\.1:(\d+)", fog_log.read_text()).group(1)  # type: ignore[union-attr]
        wait(lambda: _refused(f"http://127.0.0.1:{port}", fog_dir) >= 10, timeout=240,
             what="ten refusals counted")
    fog_text, meter_text = fog_log.read_text(), meter_log.read_text()
    firsts = re.findall(r"meter ([0-9a-f]{16}): message rejected \(future_t\): t \d+ "
                        r"\(2027-[^)]+\) is \d+ s ahead of the fog's clock .*hint: .*--sim-",
                        fog_text)
    assert sorted(firsts) == sorted(set(firsts)) and len(firsts) == 2, fog_text
    assert "future_t" in meter_text and "--sim-clock" in meter_text, meter_text
    assert "Traceback" not in fog_text + meter_text
    assert fog_text.count("MQTT connected to 127.0.0.1") == 1  # said once, with where


def _refused(url: str, fog_dir: Path) -> int:
    """The fog's future_t count from its metrics (the auditor tier)."""
    import urllib.request

    token = (fog_dir / "auditor.token").read_text().strip()
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'rejected_total\{reason="future_t"\} (\d+)', text)
    return int(m.group(1)) if m else 0
