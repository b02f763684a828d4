"""kill -9 of a fog node (a real `python -m fog_node run` process) during a burst.

After a restart no acknowledged reading is missing from the log, nothing is logged twice,
the checkpoint chain and the tree are consistent, and meters resend what was not acked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from fog_node.log.checkpoints import Checkpoints
from fog_node.log.store import SQLiteLogStore
from meterledger import wire as P
from meterledger.wire import merkle
from tests import merkle_reference as ref
from tests.kit.fogkit import ManualClock, logged_readings, mqtt_meters, wait
from tests.kit.procs import stop

T0 = 1_800_000_000
ROOT = Path(__file__).resolve().parents[2]


def fog_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fog_node", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def start(args: list[str], procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """A fog node process, added to `procs` (which the test stops however it ends)."""
    proc = subprocess.Popen([sys.executable, "-m", "fog_node", "run", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "running" in line, line
    return proc


def test_kill_9_during_a_burst_loses_nothing_acknowledged(tmp_path, broker):
    procs: list[subprocess.Popen[str]] = []
    try:
        burst_kill_and_restart(tmp_path, broker, procs)
    finally:
        for proc in procs:  # no fog left running when the test failed
            stop(proc)


def burst_kill_and_restart(tmp_path: Path, broker: Any, procs: list[subprocess.Popen[str]]) -> None:
    data = tmp_path / "fog"
    out = fog_cli("init", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    fog_pub = bytes.fromhex(out.stdout.split("fog pub ")[1].strip())
    fog_key_id = P.PublicKey(fog_pub).id

    class FogKeyView:  # what meters need: the fog's id and public key
        id = fog_key_id
        public_key = P.PublicKey(fog_pub)

    clock = ManualClock(T0 - 10)
    meters = mqtt_meters(tmp_path, 8, broker.port, FogKeyView(), clock)  # type: ignore[arg-type]
    prov = tmp_path / "provisioning.json"
    prov.write_text(json.dumps({"meters": [{"pub": vm.app.meter.key.pub.hex()} for vm in meters[:7]]}))
    out = fog_cli("enroll", "--file", str(prov), "--data-dir", str(data))
    assert out.returncode == 0 and "active" in out.stdout, out.stderr
    conf = tmp_path / "fog.toml"
    conf.write_text(f'data_dir = "{data}"\nmqtt_port = {broker.port}\nhttp_port = 0\n'
                    'mqtt_security = "lab"\n'
                    "skew_s = 1000000000\nseal_period_s = 0.1\n")
    fog = start(["--config", str(conf)], procs)

    def tick() -> None:
        for vm in meters:
            vm.app.step()

    acked_before: dict[bytes, int] = {}
    for i in range(30):  # the burst: one reading per meter per step
        clock.advance(900)
        tick()
        if i == 12:
            wait(lambda: all(vm.app.meter.spool.acked > 0 for vm in meters[:7]), tick=tick,
                 what="first acks")
        if i == 15:
            os.kill(fog.pid, signal.SIGKILL)
            fog.wait()
            acked_before = {vm.app.meter.id: vm.app.meter.spool.acked for vm in meters}
    assert sum(acked_before.values()) > 0
    # a meter enrolled while the node runs: the CLI hands the decision to the node
    fog = start(["--data-dir", str(data), "--mqtt-port", str(broker.port), "--http-port", "0",
                 "--mqtt-security", "lab",
                 "--skew-s", "1000000000", "--seal-period-s", "0.1"], procs)
    out = fog_cli("enroll", "--pub", meters[7].app.meter.key.pub.hex(), "--data-dir", str(data))
    assert out.returncode == 0 and "queued" in out.stdout, out.stdout

    def tick_and_age() -> None:
        clock.advance(7)  # meter uptime: reconnect backoff and the 60 s resend timer
        tick()

    wait(lambda: all(len(vm.app.meter.spool) == 0 for vm in meters), timeout=90,
         tick=tick_and_age, what="every reading acked after the restart")
    stdout, _ = stop(fog, signal.SIGTERM)
    assert fog.returncode == 0 and "stopped cleanly" in stdout
    check_data_dir(data, meters, acked_before)


def check_data_dir(data: Path, meters: list[Any], acked_before: dict[bytes, int]) -> None:
    log = SQLiteLogStore(data / "log.db")
    counts = logged_readings(log)
    assert set(counts.values()) == {1}, "a reading was logged twice"
    for vm in meters:
        dev, top = vm.app.meter.id, vm.app.meter.st["seq"]
        seqs = {s for (d, s) in counts if d == dev}
        assert seqs == set(range(1, top + 1)), f"meter {dev.hex()} misses readings"
        assert all((dev, s) in counts for s in range(1, acked_before.get(dev, 0) + 1))
    # the side-chain: heights 1..n, prev links, sizes never shrink, roots match, consistent
    key = P.PublicKey(bytes.fromhex((data / "fog.pub").read_text().strip()))
    cps = Checkpoints(data / "checkpoints.db", P.SigningKey.generate(), log)
    latest = cps.latest()
    assert latest is not None and latest.size == log.size()
    prev, prev_size, prev_root = P.ZERO32, 0, merkle.EMPTY_ROOT
    for h in range(1, latest.height + 1):
        cp = cps.at_height(h)
        assert cp is not None
        f = P.verify(cp.msg, key).fields
        assert f[5] == prev and f[3] >= prev_size and f[4] == log.root(f[3])
        path = log.consistency_proof(prev_size, f[3]).path if prev_size else []
        assert ref.verify_consistency(prev_size, f[3], prev_root, f[4], list(path))
        prev, prev_size, prev_root = P.digest(cp.msg), f[3], f[4]
    cps.close()
    log.close()
