"""Readings per second one RS485 bus carries to a fog node, against the line's ceiling.

For each baud rate, M virtual meters (the real firmware: Modbus slave, spool, signatures)
sit on an emulated multidrop line (hardware.rs485_bus, pseudo-terminals paced at the baud
rate, 10 bits a byte) with the fog node's bus master (fog_node.transport.rs485.master) and its real ingest
(signature checks, SQLite log, acks). Two phases, measured in one run:

* backlog: every meter holds R readings; time from the first poll (which also reads each
  meter's birth) until the fog has logged all of them and every meter holds the ack of its
  last one. Ceiling: the line time of the bytes one reading needs
  at the least (an 8-byte GET_READING, the answer with the reading, two 3.5-character
  silences), so ratio = measured / ceiling says how much of the wire the protocol uses.
* one interval: every meter closes one new interval; time one poll round that fetches each
  reading and pushes its ack (plus the empty GET_READING that ends the visit). From it, how
  many meters one bus serves within a 15-minute interval, at the measured rate and at the
  line's ceiling for the same bytes (Modbus caps a bus at 247 addresses).

    python -m tools.bench_rs485 [--meters 8] [--readings 12] [--bauds 9600,19200,115200]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fog_node.config import FogConfig
from fog_node.enrollment import apply_request
from fog_node.node import FogNode, init_data_dir
from fog_node.transport.rs485.master import BusMaster
from hardware.rs485_bus import Rs485Bus
from hardware.virtual_meter import SharedLine, VirtualClock, VirtualMeter, make_meter
from meterledger import wire as P

_START = 1_800_000_000 - 30  # just before an interval boundary
_DUR = 900
_MAX_ADDRESSES = 247


class _Manual:
    """The real-time source of the meters' VirtualClock, advanced by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Figures:
    baud: int
    reading_bytes: int
    ack_bytes: int
    backlog_rate: float  # readings/s
    backlog_ceiling: float
    visit_s: float  # line + processing time per meter per interval
    visit_ceiling_s: float  # line time of the same transactions

    @property
    def meters_by_time(self) -> int:
        return int(_DUR / self.visit_s)

    @property
    def meters_at_ceiling(self) -> int:
        return int(_DUR / self.visit_ceiling_s)


def line_s(nbytes: int, transactions: int, baud: int) -> float:
    """Seconds on the wire: 10 bits a byte, and a 3.5-character silence after each frame."""
    silence = 35 / baud if baud <= 19200 else 0.00175
    return nbytes * 10 / baud + 2 * transactions * silence


def make_backlog(root: Path, meters: int, readings: int, fog: P.SigningKey) -> Path:
    """Meter flash dirs each holding `readings` spooled readings (made once, copied per run)."""
    src = root / "meters"
    manual = _Manual()
    clock = VirtualClock(_START, 1.0, real=manual, t0=0.0)
    cfg = {"fog": fog.id.hex(), "fog_pub": fog.public_key.raw.hex(), "source": "sim", "dur": _DUR}
    vms = [make_meter(i, src / f"meter-{i:03d}", clock, cfg) for i in range(meters)]
    while min(len(vm.readings) for vm in vms) < readings:
        manual.t += 60
        for vm in vms:
            vm.app.step()
    return src


# long: one measured run: set-up, timing and tear-down together
def run_baud(root: Path, backlog: Path, fog_dir: Path, baud: int, meters: int,
             readings: int) -> Figures:
    work = root / f"run-{baud}"
    shutil.copytree(backlog, work / "meters")
    shutil.copytree(fog_dir, work / "fog")
    manual = _Manual()
    manual.t = readings * _DUR + 120.0  # where make_backlog's clock stopped, or later
    clock = VirtualClock(_START, 1.0, real=manual, t0=0.0)
    node = FogNode(FogConfig(data_dir=work / "fog"), clock.now)  # fog and meters share time
    with Rs485Bus(2, baud) as bus:
        line = SharedLine.open(bus.paths[1], baud)
        cfg = {"fog": node.id_hex, "fog_pub": node.key.public_key.raw.hex(), "source": "sim",
               "dur": _DUR, "transport": "rs485", "rs485_baud": baud}
        vms: list[VirtualMeter] = [
            make_meter(i, work / "meters" / f"meter-{i:03d}", clock,
                       dict(cfg, rs485_address=i + 1, seed=i + 1), bus=line.tap())
            for i in range(meters)]
        for vm in vms:
            with node.lock:
                apply_request(node, {"op": "enroll", "pub": vm.app.meter.key.pub.hex(),
                                     "reason": "bench"})
        stop = threading.Event()

        def serve() -> None:  # the meters' side: answer polls as fast as a board would
            while not stop.is_set():
                for vm in vms:
                    vm.app.transport.poll()
                time.sleep(0.0002)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        master = BusMaster(node, bus.paths[0], [i + 1 for i in range(meters)], clock=clock.now,
                           baud=baud)
        try:
            want = readings

            def all_acked(n: int) -> bool:
                return all(int(vm.app.meter.spool.acked) >= n for vm in vms)

            t0 = time.perf_counter()
            while not all_acked(want):
                master.poll_once()
            backlog_s = time.perf_counter() - t0
            # one interval: every meter closes one more reading
            manual.t += _DUR
            for vm in vms:
                vm.app.step()
            t0 = time.perf_counter()
            while not all_acked(want + 1):
                master.poll_once()
            round_s = time.perf_counter() - t0
        finally:
            stop.set()
            server.join(5)
            master.close()
            line.close()
            node.close()
    reading_bytes = len(vms[0].readings[-1])
    ack_bytes = _ack_size(node, vms[0])
    per_reading = line_s(8 + reading_bytes + 4, 1, baud)
    # a visit: GET_READING with the reading, the empty GET_READING, PUT_ACK and its answer
    visit_ceiling = line_s(8 + reading_bytes + 4 + 8 + 4 + ack_bytes + 4 + 8, 3, baud)
    return Figures(baud, reading_bytes, ack_bytes, meters * readings / backlog_s,
                   1 / per_reading, round_s / meters, visit_ceiling)


def _ack_size(node: FogNode, vm: VirtualMeter) -> int:
    payload = P.ack_payload(vm.app.meter.id, 1, bytes(32), 1_800_000_000, node.key.id)
    return len(P.sign1_encoded(node.key, payload))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_rs485", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=8)
    ap.add_argument("--readings", type=int, default=12, help="backlog readings per meter")
    ap.add_argument("--bauds", default="9600,19200,115200")
    args = ap.parse_args(argv)
    bauds = [int(b) for b in args.bauds.split(",")]
    if args.meters < 1 or args.meters > _MAX_ADDRESSES or args.readings < 1:
        ap.error("--meters must be 1..247 and --readings at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-rs485-") as tmp:
        root = Path(tmp)
        fog_dir = root / "fog"
        fog_key = init_data_dir(fog_dir)
        backlog = make_backlog(root, args.meters, args.readings, fog_key)
        rows = [run_baud(root, backlog, fog_dir, b, args.meters, args.readings) for b in bauds]
    r0 = rows[0]
    print(f"RS485 bus, {args.meters} virtual meters (firmware Modbus slaves), fog bus master with "
          f"its real ingest; reading {r0.reading_bytes} B, ack {r0.ack_bytes} B, 8N1")
    print(f"{'baud':>7} | {'backlog readings/s':>18} | {'line ceiling':>12} | {'ratio':>5} | "
          f"{'per meter-interval':>18} | {'ceiling':>8} | {'ratio':>5} | "
          f"{'meters/15 min':>13} | {'at ceiling':>10}")
    for f in rows:
        print(f"{f.baud:>7} | {f.backlog_rate:>18.1f} | {f.backlog_ceiling:>12.1f} | "
              f"{f.backlog_rate / f.backlog_ceiling:>5.2f} | {f.visit_s * 1000:>15.1f} ms | "
              f"{f.visit_ceiling_s * 1000:>5.1f} ms | {f.visit_ceiling_s / f.visit_s:>5.2f} | "
              f"{f.meters_by_time:>13} | {f.meters_at_ceiling:>10}")
    print("meters/15 min: how many meters' visits (reading, empty poll, ack) fit in one interval "
          "by time; Modbus addressing caps one bus at 247 of them.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

