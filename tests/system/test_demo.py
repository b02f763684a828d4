"""The README's first command, end to end: a real mosquitto (or the embedded amqtt broker),
`python -m aggregator run`, `python -m fog_node run` and virtual meters running the firmware
app -> readings logged, checkpoints anchored -> a proof bundle that verifies offline with the
CLI. Run twice on the same output directory, as a newcomer would. Its last two meters are a
PV plant and a coal unit: green certificates issued on the dispatch chain, one transferred
and retired, the coal unit's emissions charged on a carbon chain, a notarized record between
the two, and a certificate bundle that verifies offline to the plant's meter readings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from meterledger import wire as P
from tools import audit
from tools import audit_certificate as AC

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
    # the compressed clock raises no false faults: meters enrolled during the first interval
    # were not expected in it, and the grace covers real-time delays (issue 14)
    fog_log = (out / "fog.log").read_text()
    assert "fault outage" not in fog_log and "Traceback" not in fog_log, fog_log[-3000:]
    _check_green(out, run.stdout, trust)
    return bundle


def _line(stdout: str, label: str) -> str:
    lines = [x for x in stdout.splitlines() if x.startswith(f"{label:<11} ")]
    assert len(lines) == 1, (label, stdout)
    return lines[0]


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _check_green(out: Path, stdout: str, trust: str) -> None:
    """The green part: the generator meters, certificates issued for whole kWh of measured
    export, one transferred to the buyer and retired, the coal unit's emissions at the
    coal factor, the notaries' record, and the certificate's bundle verified offline."""
    assert "1 per 1,000 Wh of measured export (lowered from 1 MWh" in _line(stdout, "GC chain")
    assert "2 notaries relay records" in _line(stdout, "carbon")
    gen = re.search(r"pv-1: PV plant, 20 kWp, meter ([0-9a-f]{16}), owner ([0-9a-f]{16}); "
                    r"coal-1: coal unit, 9 kW, meter ([0-9a-f]{16}), owner ([0-9a-f]{16})",
                    _line(stdout, "generators"))
    assert gen is not None, stdout
    pv_meter, pv_owner, _, coal_owner = gen.groups()
    buyer = re.search(r"buyer ([0-9a-f]{16})", _line(stdout, "parties"))
    assert buyer is not None, stdout
    assert "(3 households, a PV plant, a coal unit)" in _line(stdout, "fog node")
    issued = re.fullmatch(r"issued +(\d+) certificates to pv-1's owner for ([\d,]+) Wh of "
                          r"measured export: (pv-1/0-1000)(, .*)?", _line(stdout, "issued"))
    assert issued is not None, stdout
    n, certified, cid = int(issued[1]), _int(issued[2]), issued[3]
    assert n >= 1 and n == certified // 1000  # one per full certificate_wh
    assert _line(stdout, "transfer").startswith(
        f"transfer    {cid} from pv-1's owner {pv_owner} to the buyer {buyer[1]} (block ")
    retired = _line(stdout, "retirement")
    assert retired.startswith(f"retirement  {cid} retired by the buyer (block ")
    assert retired.endswith("beneficiary 'Example Bakery Ltd', purpose voluntary, year 2027; "
                            "the buyer holds 0 Wh, retired 1,000 Wh")
    em = re.fullmatch(r"emissions +coal-1 stated ([\d,]+) Wh: ([\d,]+) g CO2 charged to its "
                      r"owner ([0-9a-f]{16}) \(811.2 g/kWh\) in period 0; allocated "
                      r"([\d,]+) g .*, holds ([\d,-]+) g", _line(stdout, "emissions"))
    assert em is not None, stdout
    wh, grams, allocated, holds = _int(em[1]), _int(em[2]), _int(em[4]), _int(em[5])
    assert wh > 0 and em[3] == coal_owner
    assert grams == wh * 811_200 // 1_000_000 and holds == allocated - grams
    assert f"notaries    issue/{cid} took effect on the carbon chain, attested by 2 notaries" \
        in stdout
    cert = _line(stdout, "certificate")
    assert f"`python -m tools.audit certificate` (exit 0): verified: certificate {cid} " \
           "(1000 Wh of generator pv-1)" in cert
    r = AC.verify_certificate_bundle(json.loads((out / "certificate.json").read_text()),
                                     [P.PublicKey(bytes.fromhex(trust))])
    assert (r.certificate, r.generator, r.wh, r.meter) == (cid, "pv-1", 1000, pv_meter)
    assert r.readings >= 2 and r.statements >= 1
    for log in ("carbon.log", "notary-1.log", "notary-2.log"):
        text = (out / log).read_text()
        assert "Traceback" not in text and "paused" not in text, text[-3000:]


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


def test_demo_keeps_running_for_exploring_until_stopped(tmp_path: Path) -> None:
    """`make demo-live`: after the bundle the stack stays up, its APIs answer, and SIGTERM
    (or Ctrl-C) stops everything cleanly."""
    import re
    import signal
    import threading
    import urllib.request

    from tests.kit.fogkit import wait

    out = tmp_path / "demo-out"
    proc = subprocess.Popen([sys.executable, "-m", "tools.demo", "--meters", "5",
                             "--intervals", "1", "--out", str(out), "--timeout", "120",
                             "--keep-running"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True).start()
        wait(lambda: "running until Ctrl-C" in "".join(lines) or proc.poll() is not None,
             timeout=240, what="the demo to come up")
        text = "".join(lines)
        assert proc.poll() is None, text
        fog_url = re.search(r"curl (http://127\.0\.0\.1:\d+)/v1/checkpoint", text)
        assert fog_url is not None, text
        # the green part is shown before, and its APIs are among the things to try
        assert "took effect on the carbon chain" in text and "/v1/carbon/accounts/" in text
        with urllib.request.urlopen(fog_url.group(1) + "/v1/checkpoint", timeout=30) as r:
            first = json.loads(r.read())["height"]
        # the meters go on: the side-chain grows while the demo waits
        def grew() -> bool:
            with urllib.request.urlopen(fog_url.group(1) + "/v1/checkpoint", timeout=30) as r:
                return bool(json.loads(r.read())["height"] > first)
        wait(grew, timeout=120, what="a new checkpoint while the demo keeps running")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        wait(lambda: "stopped cleanly" in "".join(lines), timeout=30, what="the last lines")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
