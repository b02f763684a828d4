"""Put the meter firmware on a board (or into a directory), let the meter make its key, enroll it.

    python -m tools.flash --board esp32|rp2 (--port PORT | --target DIR)
        (--fog-data DIR | --fog-pub HEX) [--transport mqtt|rs485]
        [--wifi-ssid S --wifi-password P] [--mqtt-host H --mqtt-port N --mqtt-root R]
        [--mqtt-ca FILE] [--mqtt-tls-name NAME | --mqtt-lab]
        [--rs485-address N] [--source sim|pulse|modbus] [--release-pub HEX|FILE]
        [--set key=value ...]
        [--firmware-bin FILE [--uf2-drive DIR]] [--enroll | --provisioning-out FILE]
        [--dry-run]

Steps, each on one progress line (`[2/8] compile firmware (24 files) ... ok`):
  write MicroPython   only with --firmware-bin: esptool erase + write (esp32; this ERASES the
                      filesystem, so the meter's key too), or the .uf2 copied to the RPI-RP2
                      drive given by --uf2-drive (rp2; the filesystem survives)
  build the image     every firmware .py compiled to .mpy with mpy-cross (main.py, boot.py and
                      provision.py stay source), plus config.json: the board's pins
                      (hardware/boards/*.json), the fog id and key, transport settings, --set;
                      an MQTT meter pins the broker's CA there (mqtt_ca: --mqtt-ca, or the
                      fog's DIR/broker/ca.crt) and connects over TLS (docs/PROTOCOL.md s. 21)
  check the board     sys.platform on the port must be the --board; a running meter is
                      stopped (main.py set aside, hard reset: its watchdog would otherwise
                      reset the board in the middle of the copy)
  install umqtt       mqtt transport only: `mpremote mip install umqtt.simple`
  copy the image      `mpremote fs cp -r`, main.py last; stale .py sources that would shadow
                      a .mpy are removed first (MicroPython imports X.py before X.mpy); the
                      data dir (key, state, spool) is left alone
  make the key        provision.py runs on the meter: it creates the key in the data dir if
                      there is none and prints PUB and ID (never the private key); an MQTT
                      meter also makes its broker password there (kept across re-flashes) and
                      prints it once: this tool keeps only its hash (mqtt_hash)
  enroll              --enroll: the decision, with the broker password's hash, goes into
                      --fog-data the way `python -m fog_node enroll` does it (queued if a fog
                      node is running there); else a provisioning file for `python -m fog_node
                      enroll --file` is written
  restart             `mpremote reset`: main.py starts the meter

With --target DIR the image is written into DIR instead (the meter's flash data dir becomes
DIR/<data_dir>), provision.py runs on the host from the firmware sources with the host hal,
and the key is born in DIR's data dir. --dry-run prints what would be run and writes nothing.
Exit status: 0 done, 1 a step failed (named on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from meterledger.infra.args import ArgumentParser
from tools.flashing import (
    BOARD_FILES,
    Flasher,
    Result,
    Runner,
    build_config,
    check_config,
    esptool_major,
    find_tool,
    parse_provision,
    read_fog_pub,
    run_command,
)

__all__ = ["CONTENT_AMBIGUOUS_ADDRESSES", "Result", "esptool_major", "find_tool", "main",
           "parse_provision", "parser", "run_command"]


# -- command line -------------------------------------------------------------------------------
# addresses whose empty 0x41 answer (address, 0x41, CRC) has a CRC low byte of 0xD2, the
# first byte of a COSE message: content alone cannot tell that answer from a message's start
CONTENT_AMBIGUOUS_ADDRESSES = (56, 59)


def parser(prog: str = "python -m tools.flash") -> argparse.ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", required=True, choices=sorted(BOARD_FILES),
                    help="esp32: ESP32-DevKitC, rp2: Raspberry Pi Pico W (hardware/boards/)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="the board's serial port (e.g. /dev/ttyUSB0, /dev/ttyACM0)")
    where.add_argument("--target", type=Path, help="write the image into this directory instead")
    fog = ap.add_mutually_exclusive_group(required=True)
    fog.add_argument("--fog-data", type=Path, help="the fog node's data dir (its fog.pub)")
    fog.add_argument("--fog-pub", help="the fog node's public key, 130 hex characters")
    ap.add_argument("--transport", choices=["mqtt", "rs485"],
                    help="how the meter reaches the fog (firmware default: none, offline)")
    ap.add_argument("--wifi-ssid", help="the Wi-Fi network an MQTT meter joins")
    ap.add_argument("--wifi-password", help="its password (stored in config.json on the board)")
    ap.add_argument("--mqtt-host", help="the broker's address as the meter reaches it")
    ap.add_argument("--mqtt-port", type=int,
                    help="the broker's port (firmware default: 8883 with TLS, 1883 in lab mode)")
    ap.add_argument("--mqtt-root", help="MQTT topic root (firmware default: grid)")
    ap.add_argument("--mqtt-ca", type=Path, metavar="FILE",
                    help="PEM of the CA the broker's certificate chains to, pinned on the meter "
                         "(default: the fog's --fog-data DIR/broker/ca.crt)")
    mqtt_mode = ap.add_mutually_exclusive_group()
    mqtt_mode.add_argument("--mqtt-tls-name", metavar="NAME",
                           help="the name on the broker's certificate, when --mqtt-host is "
                                "another (e.g. an IP address the certificate does not carry)")
    mqtt_mode.add_argument("--mqtt-lab", action="store_true",
                           help="lab only: plain MQTT, anonymous, no CA and no password")
    ap.add_argument("--rs485-address", type=int, help="Modbus address on the fog's bus, 1..247")
    ap.add_argument("--source", choices=["sim", "pulse", "modbus"],
                    help="where the registers come from (firmware default: sim)")
    ap.add_argument("--release-pub", metavar="HEX|FILE",
                    help="the release public key the meter accepts firmware updates signed by "
                         "(tools.ota keygen's .pub; default: none, updates refused)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other config.json key; the value is JSON if it parses, null "
                         "drops the key (repeatable)")
    ap.add_argument("--firmware-bin", type=Path,
                    help="write MicroPython first (esp32: .bin via esptool; rp2: .uf2)")
    ap.add_argument("--uf2-drive", type=Path, help="rp2: the mounted RPI-RP2 drive")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--enroll", action="store_true",
                     help="enroll the meter in --fog-data now")
    out.add_argument("--provisioning-out", type=Path,
                     help="provisioning file to write (default provisioning-<id>.json)")
    ap.add_argument("--reason", default="provisioned", help="reason recorded with the enrollment")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    return ap


def main(argv: list[str] | None = None, runner: Runner | None = None,
         out: TextIO | None = None, prog: str = "python -m tools.flash") -> int:
    ap = parser(prog)
    args = ap.parse_args(argv)  # exits 2 on bad usage
    if args.firmware_bin is not None and args.target is not None:
        ap.error("--firmware-bin needs a board (--port), not --target")
    if args.firmware_bin is not None and args.board == "rp2" and args.uf2_drive is None:
        ap.error("--firmware-bin on rp2 needs --uf2-drive (the RPI-RP2 drive, BOOTSEL held)")
    if args.uf2_drive is not None and (args.board != "rp2" or args.firmware_bin is None):
        ap.error("--uf2-drive goes with --board rp2 --firmware-bin FILE.uf2")
    if args.enroll and args.fog_data is None:
        ap.error("--enroll needs --fog-data (the fog node's data dir)")
    if args.rs485_address is not None and not 1 <= args.rs485_address <= 247:
        ap.error("--rs485-address must be 1..247")
    if args.rs485_address in CONTENT_AMBIGUOUS_ADDRESSES:
        # docs/PROTOCOL.md section 17: our fog frames these at the silence; a master that
        # frames by content alone (pymodbus) waits for a message that never comes
        print(f"warning: at address {args.rs485_address} the empty GET_READING answer's CRC "
              "starts with 0xD2; prefer another address if third-party masters poll this bus",
              file=sys.stderr)
    try:
        fog = read_fog_pub(args)
        config = build_config(args, fog)
    except ValueError as e:
        ap.error(str(e))
    problems = check_config(config, on_board=args.port is not None, lab=args.mqtt_lab)
    if problems:
        ap.error("; ".join(problems))
    flasher = Flasher(args, config, fog, runner or run_command, out or sys.stdout)
    return flasher.execute()


if __name__ == "__main__":
    sys.exit(main())
