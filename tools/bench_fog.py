"""Fog node throughput through a real mosquitto, measured in one run (`make bench`).

N pre-signed readings from M meters are published (QoS 1, one message each, as meters send
them) by a separate process; the fog node runs here with its real MQTT service, SQLite log
(WAL, synchronous=FULL) and group commit. Measured: readings per second from the first
publish until every meter holds the ack of its last reading (verified, logged durably,
acked), against the ceiling (raw `cryptography` P-256 verifications per second on one core,
same messages) and a naive baseline (pycose verification). The backlog drain is timed from
the fog's MQTT connection, so it leaves out starting the fog's MQTT process.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fog_node.config import FogConfig
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from fog_node.service import FogService
from hardware.broker import Mosquitto
from meterledger import wire as P
from tools.bench_verify import make_messages, pycose_verify

_ROOT = Path(__file__).resolve().parent.parent


def publisher(path: Path, port: int, fog_hex: str) -> None:
    """Child process: publish every message, then wait for each meter's final ack."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    data = path.read_bytes()
    msgs: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        raw = data[pos + 4:pos + 4 + n]
        pos += 4 + n
        msgs.append((P.parse(raw, schema=False).kid.hex(), raw))
    expect_acks = fog_hex != "0" * 16
    final: dict[str, int] = {}
    for dev, raw in msgs:
        final[dev] = max(final.get(dev, 0), P.parse(raw, schema=False).fields[2])
    done = threading.Event()
    acked: dict[str, int] = {}

    def on_message(c: Any, u: Any, m: Any) -> None:
        f = P.parse(bytes(m.payload), schema=False).fields
        dev = f[1].hex()
        acked[dev] = max(acked.get(dev, 0), f[2])
        if len(acked) == len(final) and all(acked[d] >= s for d, s in final.items()):
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    c.max_inflight_messages_set(0)  # no limit: a limit costs paho a scan per PUBACK
    c.max_queued_messages_set(0)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe(f"grid/f/{fog_hex}/ack/+", 1)
    c.loop_start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    infos = [c.publish(f"grid/d/{dev}/reading", raw, 1) for dev, raw in msgs]
    for info in infos:
        info.wait_for_publish(60)
    t_pub = time.perf_counter() - t0
    ok = done.wait(300) if expect_acks else True
    t_all = time.perf_counter() - t0
    c.loop_stop()
    print(json.dumps({"published_s": t_pub, "acked_s": t_all, "complete": ok}))


def ceiling_and_baseline(msgs: list[tuple[bytes, P.SigningKey]]) -> tuple[float, float]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from pycose.keys import EC2Key
    from pycose.keys.curves import P256

    pre = []
    for raw, k in msgs:
        m = P.parse(raw, schema=False)
        r, s = int.from_bytes(m.signature[:32], "big"), int.from_bytes(m.signature[32:], "big")
        pre.append((k.public_key.key, utils.encode_dss_signature(r, s), m.tbs))
    algo = ec.ECDSA(hashes.SHA256())
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for key, der, tbs in pre:
            key.verify(der, tbs, algo)
        best = min(best, time.perf_counter() - t0)
    ceiling = len(pre) / best
    sub = msgs[:300]
    keys = {k.id: EC2Key(crv=P256, x=k.public_key.raw[1:33], y=k.public_key.raw[33:]) for _, k in sub}
    t0 = time.perf_counter()
    for raw, k in sub:
        assert pycose_verify(raw, keys[k.id])
    pycose = len(sub) / (time.perf_counter() - t0)
    return ceiling, pycose


def _enrolled_node(d: Path, msgs: list[tuple[bytes, P.SigningKey]], port: int = 1883) -> FogNode:
    init_data_dir(d)
    node = FogNode(FogConfig(data_dir=d, mqtt_port=port, seal_period_s=1.0, skew_s=10**10,
                             mqtt_security="lab"),
                   time.time)
    for pub in {k.public_key.raw for _, k in msgs}:
        apply_request(node, {"pub": pub.hex(), "status": "active"})
    return node


def ingest_only(msgs: list[tuple[bytes, P.SigningKey]], group: int = 1000) -> float:
    """Readings/s of Ingest.process alone: verify, check, log (fsync per group), sign acks."""
    with tempfile.TemporaryDirectory() as tmp:
        node = _enrolled_node(Path(tmp), msgs)
        raws = [r for r, _ in msgs]
        t0 = time.perf_counter()
        for i in range(0, len(raws), group):
            node.ingest.process(raws[i:i + group])
        rate = len(raws) / (time.perf_counter() - t0)
        node.close()
    return rate


def _publish(feed: Path, port: int, fog_hex: str) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, "-m", "tools.bench_fog", "--publisher", str(feed), "--port", str(port),
         "--fog", fog_hex], cwd=_ROOT, capture_output=True, text=True, timeout=600)
    if child.returncode != 0:
        raise RuntimeError(child.stderr)
    out: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return out


def through_mqtt(msgs: list[tuple[bytes, P.SigningKey]]) -> tuple[float, float, float]:
    """(backlog drain rate, live rate, publisher rate) through a real mosquitto."""
    total = len(msgs)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        feed = d / "msgs.bin"
        feed.write_bytes(b"".join(struct.pack(">I", len(r)) + r for r, _ in msgs))
        with Mosquitto(d / "broker", persistence=False) as broker:
            # 1. backlog: the fog's persistent session exists, the fog is away while all
            #    readings arrive, then it drains them alone
            node = _enrolled_node(d / "fog1", msgs, broker.port)
            svc = FogService(node)
            svc.start()
            svc.connected.wait(10)
            svc.stop()
            _publish(feed, broker.port, "0" * 16)  # no acks to wait for: nobody is ingesting
            svc = FogService(node)
            svc.start()
            # timed from the connection: the drain rate, without starting the MQTT process
            svc.connected.wait(10)
            t0 = time.perf_counter()
            while node.ingest.counters["logged"] < total:
                if time.perf_counter() - t0 > 300:
                    raise RuntimeError("backlog not drained in 300 s")
                time.sleep(0.005)
            backlog = total / (time.perf_counter() - t0)
            svc.stop()
            node.close()
            # 2. live: publisher and fog at once, until every meter holds its last ack
            node = _enrolled_node(d / "fog2", msgs, broker.port)
            svc = FogService(node)
            svc.start()
            svc.connected.wait(10)
            res = _publish(feed, broker.port, node.id_hex)
            svc.stop()
            logged = node.ingest.counters["logged"]
            node.close()
    if not res["complete"] or logged < total:
        raise RuntimeError(f"incomplete live run: {logged} of {total} logged")
    return backlog, total / res["acked_s"], total / res["published_s"]


def sign_rate(n: int = 2000) -> float:
    key = P.SigningKey.from_int(0xF06)
    t0 = time.perf_counter()
    for i in range(n):
        key.sign(i.to_bytes(8, "big"))
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_fog", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--readings", type=int, default=10_000)
    ap.add_argument("--publisher", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--fog", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publisher:
        publisher(args.publisher, args.port, args.fog)
        return 0
    msgs = make_messages(args.meters, args.readings)
    ceiling, pycose = ceiling_and_baseline(msgs)
    signs = sign_rate()
    alone = ingest_only(msgs)
    backlog, live, pushed = through_mqtt(msgs)
    per_group = min(args.meters, 1000)
    acks_per_reading = per_group / 1000 if args.readings >= 1000 else 1.0
    bound = 1 / (1 / ceiling + acks_per_reading / signs)
    print(f"{args.readings:,} pre-signed readings from {args.meters} meters; one machine, 2 cores")
    print(f"  ceiling: raw cryptography P-256 verify, one core          {ceiling:>9,.0f} /s")
    print(f"  naive baseline: pycose verify                             {pycose:>9,.0f} /s")
    print(f"  fog ingest alone (verify, check, log with fsync per group, sign acks)"
          f"  {alone:>7,.0f} /s  = {alone / ceiling:.2f} x ceiling")
    print(f"  fog draining a backlog from mosquitto (verified, logged, acked)"
          f"      {backlog:>7,.0f} /s  = {backlog / ceiling:.2f} x ceiling, "
          f"{backlog / pycose:.0f} x pycose")
    print(f"  live: publisher + mosquitto + fog sharing 2 cores         {live:>9,.0f} /s  "
          f"(publisher alone pushed {pushed:,.0f} /s)")
    print(f"  bound: every group signs one ack per meter it touched ({acks_per_reading:.2f} per"
          f" reading here, 1.0 when each meter sends one reading per interval);")
    print(f"         at {signs:,.0f} signatures/s the verify+ack bound on one core is "
          f"{bound:,.0f} /s = {bound / ceiling:.2f} x ceiling (the fog spreads both over the"
          " cores it has)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
