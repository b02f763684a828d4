"""Virtual meters: the real firmware app on the host HAL, N at a time.

    python -m hardware.virtual_meter --count 3 --compress 900 --intervals 4 --print

Each meter has its own flash directory (its key is generated there at first boot, as on a
board), its own synthetic household and a clock that can run compressed, so a 15-minute
interval passes in about a second with --compress 900.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tools.fields import named
from tools.firmware import module

DEFAULT_START = 1_800_000_000 - 60  # a minute before an interval boundary (2027-01-15)


class VirtualClock:
    """Wall clock (Unix s) and uptime (ms) that run `compress` times faster than real time."""

    def __init__(self, start: float, compress: float, real: Callable[[], float] = time.monotonic,
                 t0: float | None = None):
        # t0: the real time at which the clock reads `start`; processes that share (start,
        # compress, t0) on time.time share one simulated clock (the demo's fog and meters)
        self.start = start
        self.compress = compress
        self.real = real
        self.t0 = real() if t0 is None else t0

    def now(self) -> float:
        return self.start + (self.real() - self.t0) * self.compress

    def ticks_ms(self) -> int:
        return int((self.real() - self.t0) * self.compress * 1000)


@dataclass
class VirtualMeter:
    index: int
    app: Any
    board: Any
    readings: list[bytes] = field(default_factory=list)

    @property
    def id_hex(self) -> str:
        return str(self.app.meter.id.hex())


def make_meter(index: int, data_dir: pathlib.Path, clock: VirtualClock, config: dict[str, Any],
               transport: Any = None) -> VirtualMeter:
    """One meter: its board, its app, and (config "transport": "mqtt") the firmware's own
    MQTT transport over the paho-backed umqtt API."""
    host = module("hal.host")
    app_mod = module("app")
    cfg = dict(config)
    cfg.setdefault("seed", index + 1)
    board_cfg = dict(cfg, data_dir=str(data_dir), clock=clock.now, ticks_ms=clock.ticks_ms,
                     sleep_ms=lambda ms: None)
    board = host.Board(board_cfg)
    if transport is None and cfg.get("transport") == "mqtt":
        from hardware import umqtt_paho

        transport = module("transport_mqtt").MqttTransport(board, cfg, umqtt_paho.factory)
    vm = VirtualMeter(index, None, board)
    vm.app = app_mod.App(board, cfg, transport, on_reading=vm.readings.append)
    vm.app.start()
    return vm


def describe(msg: bytes) -> str:
    cose = module("core.cose")
    f = named(cose.parse(msg).fields)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(f["t"]))
    flags = ",".join(f["flag_names"]) or "-"
    return (f"meter {f['dev']} seq {f['seq']:>4} t {when} imp {f['imp']:>7} Wh "
            f"exp {f['exp']:>6} Wh flags {flags} ({len(msg)} bytes)")


def run(count: int, data_dir: pathlib.Path, compress: float, intervals: int, start: float,
        config: dict[str, Any], out: Callable[[str], None] | None = None,
        period: float = 0.01, fresh: bool = False) -> list[VirtualMeter]:
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    clock = VirtualClock(start, compress)
    meters = [make_meter(i, data_dir / f"meter-{i:03d}", clock, config) for i in range(count)]
    keys = module("core.keys")
    cose = module("core.cose")
    while True:
        for vm in meters:
            before = len(vm.readings)
            vm.app.step()
            for msg in vm.readings[before:]:
                # check what the meter sent the way a receiver would, before showing it
                cose.verify(msg, keys.VerifyingKey(vm.app.meter.key.pub))
                if out is not None:
                    out(describe(msg) + " signature ok")
                    out("  " + msg.hex())
        if intervals and all(len(vm.readings) >= intervals for vm in meters):
            return meters
        time.sleep(period)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hardware.virtual_meter", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1, help="number of meters")
    ap.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("demo-out/meters"),
                    help="one flash directory per meter is created below it")
    ap.add_argument("--compress", type=float, default=1.0,
                    help="time compression: 900 makes a 15-minute interval last a second")
    ap.add_argument("--intervals", type=int, default=0,
                    help="stop once every meter made this many readings (0 = run forever)")
    ap.add_argument("--start", type=float, default=None,
                    help="virtual clock start, Unix s (default: real time, or a fixed "
                         "reproducible start when compressing)")
    ap.add_argument("--dur", type=int, default=900, help="interval length in seconds")
    ap.add_argument("--fog", help="fog id (16 hex) the meters are configured for")
    ap.add_argument("--fog-pub", help="fog public key (130 hex); meters then verify acks/commands")
    ap.add_argument("--mqtt-host", help="send readings to this MQTT broker (SPEC section 5)")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument("--mqtt-root", default="grid", help="topic root")
    ap.add_argument("--fresh", action="store_true", help="wipe --data-dir first (new keys)")
    ap.add_argument("--print", dest="show", action="store_true", help="print every signed reading")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be at least 1")
    if args.compress <= 0:
        ap.error("--compress must be positive")
    start = args.start if args.start is not None else (DEFAULT_START if args.compress > 1 else time.time())
    config: dict[str, Any] = {"dur": args.dur, "source": "sim"}
    if args.fog:
        config["fog"] = args.fog
    if args.fog_pub:
        config["fog_pub"] = args.fog_pub
    if args.mqtt_host:
        if not args.fog:
            ap.error("--mqtt-host needs --fog (the fog id is part of the ack and command topics)")
        config.update(transport="mqtt", mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port,
                      mqtt_root=args.mqtt_root)
    out = print if args.show else None
    try:
        meters = run(args.count, args.data_dir, args.compress, args.intervals, start, config, out,
                     fresh=args.fresh)
    except KeyboardInterrupt:
        return 130
    total = sum(len(vm.readings) for vm in meters)
    print(f"{len(meters)} virtual meter(s), {total} signed readings, all signatures verified; "
          f"flash under {args.data_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
