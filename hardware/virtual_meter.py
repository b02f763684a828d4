"""Virtual meters: the real firmware app on the host HAL, N at a time.

    python -m hardware.virtual_meter --count 3 --compress 900 --intervals 4 --print
    python -m hardware.virtual_meter --count 4 --rs485 /dev/pts/5 --address 1 --fog-pub HEX
    python -m hardware.virtual_meter --modbus-meter /dev/pts/7 --mqtt-host 127.0.0.1 --fog ID
    python -m hardware.virtual_meter --mqtt-host 127.0.0.1 --mqtt-ca fog-data/broker/ca.crt --fog ID

Each meter has its own flash directory (its key is generated there at first boot, as on a
board), its own synthetic household and a clock that can run compressed, so a 15-minute
interval passes in about a second with --compress 900.

With --rs485 the meters are Modbus RTU slaves (addresses N, N+1, ...) on one serial line,
the firmware's own transport_rs485 answering the fog's polls; with --modbus-meter each
meter's source is an SDM-style meter read over Modbus (addresses --modbus-address, +1, ...)
instead of the synthetic household.

On MQTT a meter is provisioned as tools/flash.py provisions a board: its broker password is
made in its flash directory (mqtt.secret) at first boot. With --mqtt-ca (or an image whose
config.json pins the fog's CA) it connects over TLS and logs in with it; the fog lets it in
once enrolled with the password's hash (`python -m fog_node enroll --pub PUB
--mqtt-secret-file DIR/mqtt.secret`, or `tools.flash --target DIR --enroll` for an image).
Without a CA it connects plain and anonymous: lab brokers only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import serial

from hardware.firmware import module
from meterledger.errors import ConfigError
from meterledger.infra import simclock
from meterledger.infra.args import ArgumentParser
from meterledger.wire.keys import PublicKey
from meterledger.wire.names import named


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


class SharedLine:
    """One serial port shared by several in-process endpoints, as transceivers on one wire:
    every endpoint hears what arrives and what the others send (RS485 is a party line)."""

    def __init__(self, port: Any):
        self.port = port
        self.taps: list[LineTap] = []

    @classmethod
    def open(cls, url: str, baud: int) -> SharedLine:
        return cls(serial.serial_for_url(url, baudrate=baud, bytesize=8, parity="N",
                                         stopbits=1, timeout=0))

    def tap(self) -> LineTap:
        t = LineTap(self)
        self.taps.append(t)
        return t

    def pump(self) -> None:
        n = self.port.in_waiting
        if n:
            data = self.port.read(n)
            for t in self.taps:
                t.buf += data

    def send(self, sender: LineTap, data: bytes) -> int:
        for t in self.taps:
            if t is not sender:
                t.buf += data
        n: int = self.port.write(data)
        self.port.flush()
        return n

    def close(self) -> None:
        self.port.close()


class LineTap:
    """One endpoint of a SharedLine with the MicroPython UART calls (read/write/any)."""

    def __init__(self, line: SharedLine):
        self.line = line
        self.buf = bytearray()

    def any(self) -> int:
        self.line.pump()
        return len(self.buf)

    def read(self, n: int) -> bytes | None:
        self.line.pump()
        if not self.buf:
            return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def write(self, data: bytes) -> int:
        return self.line.send(self, bytes(data))


@dataclass
class VirtualMeter:
    index: int
    app: Any
    board: Any
    readings: list[bytes] = field(default_factory=list)

    @property
    def id_hex(self) -> str:
        return str(self.app.meter.id.hex())

    @property
    def mqtt_secret(self) -> str:
        """The broker password born in the meter's flash ("" for a meter not on MQTT)."""
        return str(module("transport_mqtt").read_secret(self.board.fs()))


def make_meter(index: int, data_dir: pathlib.Path, clock: VirtualClock, config: dict[str, Any],
               transport: Any = None, bus: Any = None, meter_line: Any = None,
               source: Any = None) -> VirtualMeter:
    """One meter: its board, its app, and its transport: config "transport" "mqtt" is the
    firmware's MQTT transport over the paho-backed umqtt API, "rs485" its Modbus slave on
    `bus` (a port object: a SharedLine tap, or the board's serial port `rs485_port`).
    Config "source" "modbus" reads an SDM meter on `meter_line` (or `meter_port`); `source`,
    an object with a firmware source's calls (core/sources.py: name, read, state, restore),
    replaces the config's (the demo's generator meters: a PV plant, a coal unit)."""
    host = module("hal.host")
    app_mod = module("app")
    cfg = dict(config)
    cfg.setdefault("seed", index + 1)
    if callable(cfg.get("log_sink")):  # the console (--verbose): each line says which meter
        cfg["log_sink"] = (lambda sink: lambda line: sink(f"[{index}] {line}"))(cfg["log_sink"])
    board_cfg = dict(cfg, data_dir=str(data_dir), clock=clock.now, ticks_ms=clock.ticks_ms,
                     sleep_ms=lambda ms: None)
    # the loader's journal first, as main.py runs it on a board: a trial image counts this
    # boot, and one that never reached the fog goes back to the old image
    module("main").check_image(board_cfg)
    board = host.Board(board_cfg)
    if transport is None and cfg.get("transport") == "mqtt":
        from hardware import umqtt_paho

        tm = module("transport_mqtt")
        tm.ensure_secret(board.fs(), board.random_bytes)  # as provision.py does on a board
        transport = tm.MqttTransport(board, cfg, umqtt_paho.factory)
    if transport is None and cfg.get("transport") == "rs485":
        # the slave's silence timing runs on real time, never on the compressed clock
        transport = module("transport_rs485").Rs485Slave(
            bus if bus is not None else board.uart_rs485("bus"), int(cfg["rs485_address"]),
            int(cfg.get("rs485_baud", 19200)))
    if source is None and cfg.get("source") == "modbus" and meter_line is not None:
        source = module("core.sdm").SdmSource(
            meter_line, int(cfg.get("modbus_address", 1)), int(cfg.get("modbus_timeout_ms", 200)),
            baud=int(cfg.get("meter_baud", 9600)),
            backoff_ms=int(cfg.get("modbus_backoff_ms", 10000)))
    vm = VirtualMeter(index, None, board)
    vm.app = app_mod.App(board, cfg, transport, source=source, on_reading=vm.readings.append)
    vm.app.start()
    return vm


def describe(msg: bytes) -> str:
    cose = module("core.cose")
    f = named(cose.parse(msg).fields)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(f["t"]))
    flags = ",".join(f["flag_names"]) or "-"
    return (f"meter {f['dev']} seq {f['seq']:>4} t {when} imp {f['imp']:>7} Wh "
            f"exp {f['exp']:>6} Wh flags {flags} ({len(msg)} bytes)")


def meter_config(config: dict[str, Any], i: int) -> dict[str, Any]:
    """Meter i's config: consecutive RS485 and SDM addresses from the first meter's."""
    cfg = dict(config)
    if "rs485_address" in cfg:
        cfg["rs485_address"] = int(cfg["rs485_address"]) + i
    if cfg.get("source") == "modbus":
        cfg["modbus_address"] = int(cfg.get("modbus_address", 1)) + i
    return cfg


def run(count: int, data_dir: pathlib.Path, compress: float, intervals: int, start: float,
        config: dict[str, Any], out: Callable[[str], None] | None = None,
        period: float = 0.01, fresh: bool = False, rs485: str | None = None,
        modbus_meter: str | None = None, epoch: float | None = None,
        flash: pathlib.Path | None = None) -> list[VirtualMeter]:
    """`flash`: the one meter's flash dir (a --image's data dir) instead of data_dir/meter-i."""
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    # with an epoch the clock runs on Unix time, so it can be shared with a fog started with
    # the same sim_start/sim_epoch/sim_compress (FogConfig)
    clock = VirtualClock(start, compress) if epoch is None else \
        VirtualClock(start, compress, time.time, t0=epoch)
    bus = SharedLine.open(rs485, int(config.get("rs485_baud", 19200))) if rs485 else None
    line = SharedLine.open(modbus_meter, int(config.get("meter_baud", 9600))) if modbus_meter else None
    if bus is not None:
        period = min(period, 0.002)  # a slave must answer within the master's timeout
    meters = [make_meter(i, flash or data_dir / f"meter-{i:03d}", clock, meter_config(config, i),
                         bus=bus.tap() if bus else None, meter_line=line.tap() if line else None)
              for i in range(count)]
    if flash is None:
        write_provisioning(data_dir, meters)
    keys = module("core.keys")
    cose = module("core.cose")
    # an SDM source costs a few Modbus transactions a sample: sample it like a board does
    # (every period_ms of real time), while slaves keep answering polls in between
    step_every = 0.25 if line is not None else period
    last_step = 0.0
    watch = AckWatch(config, clock.now)
    while True:
        stepping = time.monotonic() - last_step >= step_every
        if stepping:
            last_step = time.monotonic()
        for vm in meters:
            if not stepping:
                if vm.app.transport is not None:
                    vm.app.transport.poll()
                continue
            before = len(vm.readings)
            vm.app.step()
            for msg in vm.readings[before:]:
                # check what the meter sent the way a receiver would, before showing it
                cose.verify(msg, keys.VerifyingKey(vm.app.meter.key.pub))
                if out is not None:
                    out(describe(msg) + " signature ok")
                    out("  " + msg.hex())
            watch.check(vm)
        if intervals and all(len(vm.readings) >= intervals and (bus is None or _all_acked(vm))
                             for vm in meters):
            return meters
        time.sleep(period)


def write_provisioning(data_dir: pathlib.Path, meters: list[VirtualMeter]) -> pathlib.Path:
    """DATA_DIR/provisioning.json: what flashing hands a fog for each meter (its public key,
    and its broker password's hash if it has one), for `meterledger fog enroll --file`."""
    from fog_node.broker_access import hash_password

    path = data_dir / "provisioning.json"
    entries = []
    for vm in meters:
        entry = {"pub": bytes(vm.app.meter.key.pub).hex(), "dev": vm.id_hex}
        if vm.mqtt_secret:
            entry["mqtt_hash"] = hash_password(vm.mqtt_secret)
        entries.append(entry)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meters": entries}, indent=1) + "\n")
    tmp.replace(path)
    print(f"{len(meters)} virtual meter(s); their keys are in {path}: enroll them with "
          f"`meterledger fog enroll --file {path}`", file=sys.stderr, flush=True)
    return path


class AckWatch:
    """Says once per meter, on stderr, why a meter that sends gets no acks: the usual causes
    are a meter the fog has not enrolled, a clock the fog's disagrees with (`future_t`), a
    wrong fog id or key; the fog's log names the reason it refused (fog_node.rejections)."""

    SILENT_READINGS = 3  # readings made without any ack before the meter complains

    def __init__(self, config: dict[str, Any], now: Callable[[], float],
                 say: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.now = now
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.warned: set[int] = set()

    def check(self, vm: VirtualMeter) -> bool:
        """True if it warned about `vm` now."""
        meter = vm.app.meter
        if (vm.index in self.warned or self.config.get("transport") != "mqtt"
                or int(meter.spool.acked) > 0 or len(vm.readings) < self.SILENT_READINGS):
            return False
        self.warned.add(vm.index)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.now()))
        transport = vm.app.transport
        if transport is not None and not transport.connected():
            why = [f"it is not connected to the broker {self.config.get('mqtt_host')}: over "
                   "TLS the broker lets a meter in once the fog enrolled it with its password "
                   "hash (`meterledger fog enroll --file DATA_DIR/provisioning.json`)"]
        else:
            why = ["is it enrolled? (`meterledger fog devices`)",
                   f"its clock reads {when}; the fog refuses readings ahead of its own clock "
                   "(future_t): on a simulated clock, give the meters the fog's (--sim-clock "
                   "FOG_DATA_DIR)",
                   f"is fog {self.config.get('fog')} the one on this broker?"]
        rejected = getattr(vm.app.meter, "last_reject", None)
        if rejected:
            why.insert(0, f"it refused what came back: {rejected} (is --fog-pub right?)")
        self.say(f"meter {vm.index} ({vm.id_hex}): {len(vm.readings)} readings made, none "
                 "acked by the fog; " + "; ".join(why) + ". The fog's log names the reason "
                 "it refuses a meter's messages.")
        return True


def _all_acked(vm: VirtualMeter) -> bool:
    """On RS485 a reading is only delivered once the fog has acked it (the master pulls)."""
    return int(vm.app.meter.spool.acked) >= int(vm.app.meter.st["seq"])


# long: the argparse flags of every transport and source, then one dispatch
def main(argv: list[str] | None = None, prog: str = "python -m hardware.virtual_meter") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1, help="number of meters")
    ap.add_argument("--image", type=pathlib.Path, metavar="DIR",
                    help="boot one meter from a flashed image (python -m tools.flash --target DIR):"
                         " its config.json and its flash data dir, with its key")
    ap.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("demo-out/meters"),
                    help="one flash directory per meter is created below it")
    ap.add_argument("--intervals", type=int, default=0,
                    help="stop once every meter made this many readings (0 = run forever)")
    ap.add_argument("--dur", type=int, default=900, help="interval length in seconds")
    ap.add_argument("--fog-data", type=pathlib.Path, metavar="DIR",
                    help="a fog's data dir on this machine (a lab): its id, its public key, "
                         "its broker's CA and, if it runs simulated, its clock, instead of "
                         "--fog, --fog-pub, --mqtt-ca and --sim-clock")
    ap.add_argument("--fog", help="fog id (16 hex) the meters are configured for")
    ap.add_argument("--fog-pub", help="fog public key (130 hex); meters then verify acks/commands")
    ap.add_argument("--mqtt-host", help="send readings to this MQTT broker (SPEC section 5)")
    ap.add_argument("--mqtt-port", type=int, default=None,
                    help="the broker's port (default: 8883 with --mqtt-ca, else 1883)")
    ap.add_argument("--mqtt-root", default="grid", help="topic root")
    ap.add_argument("--mqtt-ca", type=pathlib.Path, metavar="FILE",
                    help="PEM of the CA the broker's certificate chains to (the fog's "
                         "broker/ca.crt): connect over TLS with the meter's password")
    ap.add_argument("--mqtt-tls-name", metavar="NAME",
                    help="the name on the broker's certificate, if not --mqtt-host")
    ap.add_argument("--rs485", metavar="PATH",
                    help="serve the fog's Modbus RTU polls on this serial device, pty or pyserial URL")
    ap.add_argument("--address", type=int, default=None,
                    help="RS485 slave address of the first meter (the next ones count up)")
    ap.add_argument("--baud", type=int, default=19200, help="RS485 bus baud rate (8N1)")
    ap.add_argument("--modbus-meter", metavar="PATH",
                    help="read energy from an SDM-style meter on this serial device/pty/URL")
    ap.add_argument("--modbus-address", type=int, default=1,
                    help="Modbus address of the first meter's SDM (the next ones count up)")
    ap.add_argument("--fresh", action="store_true", help="wipe --data-dir first (new keys)")
    ap.add_argument("--print", dest="show", action="store_true", help="print every signed reading")
    ap.add_argument("--verbose", action="store_true",
                    help="show each meter's serial console (as a board prints it), at info")
    ap.add_argument("--log-level", choices=["debug", "info", "warn", "error", "off"],
                    help="the console's level (implies --verbose; default info)")
    ap.add_argument("--release-pub", metavar="HEX",
                    help="release public key (130 hex) the meters accept firmware images of")
    simclock.add_arguments(ap, old_names=True)
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be at least 1")
    if args.fog_data is not None:
        fog_data_defaults(ap, args)
    try:
        sim = simclock.from_arguments(args)
    except ConfigError as e:
        ap.error(str(e))
    config: dict[str, Any] = {"dur": args.dur, "source": "sim"}
    flash = None
    if args.image is not None:
        config, flash = image_config(ap, args)
    if args.fog:
        config["fog"] = args.fog
    if args.fog_pub:
        config["fog_pub"] = args.fog_pub
    if args.verbose or args.log_level:
        config.update(log_level=args.log_level or "info", log_sink=print)
    if args.release_pub:
        try:
            config["release_pub"] = PublicKey(bytes.fromhex(args.release_pub)).raw.hex()
        except ValueError as e:
            ap.error(f"--release-pub: not a P-256 public key ({e})")
    if args.rs485:
        if args.mqtt_host:
            ap.error("a meter has one transport: --rs485 or --mqtt-host, not both")
        address = args.address or int(config.get("rs485_address", 1))
        if not 1 <= address or address + args.count - 1 > 247:
            ap.error("RS485 addresses must lie in 1..247")
        config.update(transport="rs485", rs485_address=address, rs485_baud=args.baud)
    elif config.get("transport") == "rs485":
        ap.error("this image's meter talks RS485: give --rs485 PATH (the line it is wired to)")
    if args.modbus_meter:
        if not 1 <= args.modbus_address or args.modbus_address + args.count - 1 > 247:
            ap.error("Modbus addresses must lie in 1..247")
        config.update(source="modbus", modbus_address=args.modbus_address)
    if config.get("source") == "modbus" and not args.modbus_meter:
        ap.error("this image's meter reads an SDM: give --modbus-meter PATH")
    if args.mqtt_host:
        if not config.get("fog"):
            ap.error("--mqtt-host needs --fog (the fog id is part of the ack and command topics)")
        config.update(transport="mqtt", mqtt_host=args.mqtt_host, mqtt_root=args.mqtt_root)
        if args.mqtt_ca is not None:
            try:
                config["mqtt_ca"] = args.mqtt_ca.read_text()
            except OSError as e:
                ap.error(f"--mqtt-ca: {e}")
            if "-----BEGIN CERTIFICATE-----" not in config["mqtt_ca"]:
                ap.error(f"--mqtt-ca {args.mqtt_ca}: not a PEM certificate")
        if args.mqtt_tls_name:
            config["mqtt_tls_name"] = args.mqtt_tls_name
        if args.mqtt_port is not None:
            config["mqtt_port"] = args.mqtt_port
    out = print if args.show else None
    import signal

    # SIGTERM (a test's or a service manager's stop) ends the process at once, like Ctrl-C,
    # but with exit status 143 and stdio flushed; the meters' flash is power-loss safe
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        meters = run(args.count, args.data_dir, sim.compress if sim else 1.0, args.intervals,
                     sim.start if sim else time.time(), config, out, fresh=args.fresh,
                     rs485=args.rs485, modbus_meter=args.modbus_meter,
                     epoch=sim.epoch if sim else None, flash=flash)
    except KeyboardInterrupt:
        return 130
    total = sum(len(vm.readings) for vm in meters)
    print(f"{len(meters)} virtual meter(s), {total} signed readings, all signatures verified; "
          f"flash under {flash or args.data_dir}/")
    return 0


def fog_data_defaults(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill --fog, --fog-pub, --mqtt-ca and --sim-clock from a fog's data dir (flags given
    explicitly win)."""
    from meterledger.wire import PublicKey

    d = args.fog_data
    try:
        pub = PublicKey(bytes.fromhex((d / "fog.pub").read_text().strip()))
    except (OSError, ValueError) as e:
        ap.error(f"--fog-data {d}: no fog public key there ({e}); run `meterledger fog init "
                 f"--data-dir {d}` first")
    args.fog = args.fog or pub.id.hex()
    args.fog_pub = args.fog_pub or pub.raw.hex()
    if args.mqtt_ca is None and (d / "broker" / "ca.crt").is_file():
        args.mqtt_ca = d / "broker" / "ca.crt"
    no_sim = all(getattr(args, n) is None for n in ("sim_compress", "sim_start", "sim_epoch",
                                                    "sim_clock"))
    if no_sim and (d / simclock.SIM_FILE).is_file():
        args.sim_clock = d / simclock.SIM_FILE
    elif no_sim:
        print(f"{d} holds no {simclock.SIM_FILE}: the meters run on real time (a fog run with "
              "--sim-compress writes it when it starts: start the meters after it)",
              file=sys.stderr, flush=True)


def image_config(ap: argparse.ArgumentParser, args: argparse.Namespace,
                 ) -> tuple[dict[str, Any], pathlib.Path]:
    """The config of a flashed image, and its flash data dir. Board pins mean nothing on a
    host; the line (--rs485, --modbus-meter) and the broker (--mqtt-host) come from the
    command line, since the image's names are the board's."""
    import json

    if args.count != 1:
        ap.error("--image boots one meter: drop --count")
    try:
        config = json.loads((args.image / "config.json").read_text())
    except (OSError, ValueError) as e:
        ap.error(f"--image {args.image}: no readable config.json ({e})")
    if not isinstance(config, dict):
        ap.error(f"--image {args.image}: config.json is not an object")
    flash = args.image / str(config.pop("data_dir", "/data")).lstrip("/")
    config.setdefault("fw_dir", str(args.image))  # what a firmware update replaces
    if not ((flash / "key").exists() or (flash / "key.tmp").exists()):
        ap.error(f"--image {args.image}: no key in {flash} (was it provisioned?)")
    if config.get("transport") == "mqtt" and not args.mqtt_host:
        args.mqtt_host = config.get("mqtt_host")
        if "mqtt_port" in config and args.mqtt_port is None:
            args.mqtt_port = int(config["mqtt_port"])
        args.mqtt_root = str(config.get("mqtt_root", args.mqtt_root))
    if config.get("transport") == "rs485":
        args.baud = int(config.get("rs485_baud", args.baud))
    if "modbus_address" in config:
        args.modbus_address = int(config["modbus_address"])
    return config, flash


if __name__ == "__main__":
    sys.exit(main())
