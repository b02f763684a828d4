"""What `python -m tools.flash` puts in a meter's config.json, and reads back from
provision.py: the board's pins, the fog's id and key, the transport and its broker security
(docs/PROTOCOL.md section 21), the --set extras; PUB, ID and the meter's broker password."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fog_node.broker_access import BROKER, hash_password
from hardware.firmware import BOARDS_DIR
from meterledger import wire as P
from meterledger.infra import pki

BOARD_FILES = {"esp32": "esp32_devkitc.json", "rp2": "pico_w.json"}


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """--set key=value: the value as JSON when it parses (19200, true, "x", null), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set wants key=value, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def read_fog_pub(args: argparse.Namespace) -> P.PublicKey:
    if args.fog_pub:
        text = args.fog_pub
    else:
        try:
            text = (Path(args.fog_data) / "fog.pub").read_text()
        except OSError as e:
            raise ValueError(f"--fog-data: {e} (run `python -m fog_node init` first)") from None
    try:
        return P.PublicKey(bytes.fromhex(text.strip()))
    except ValueError as e:  # ProtocolError is a ValueError
        raise ValueError(f"fog public key: {e}") from None


def read_mqtt_ca(args: argparse.Namespace) -> str | None:
    """The PEM of the CA the meter pins for the broker: --mqtt-ca, else the fog's
    (--fog-data DIR/broker/ca.crt); None when neither is there."""
    path = Path(args.mqtt_ca) if args.mqtt_ca else (
        Path(args.fog_data) / BROKER / "ca.crt" if args.fog_data else None)
    if path is None or (not args.mqtt_ca and not path.is_file()):
        return None
    try:
        cert = pki.load_cert(path)
    except pki.PKIError as e:
        raise ValueError(f"--mqtt-ca: {e}") from None
    return pki.cert_pem(cert)


def read_release_pub(args: argparse.Namespace) -> str | None:
    """The release public key the meter pins for firmware updates (docs/PROTOCOL.md
    section 22): --release-pub, 130 hex or a file holding them (tools.ota keygen)."""
    text = getattr(args, "release_pub", None)
    if not text:
        return None
    raw = text.strip()
    if len(raw) != 130 or not all(c in "0123456789abcdefABCDEF" for c in raw):
        try:
            raw = Path(text).read_text().strip()
        except OSError as e:
            raise ValueError(f"--release-pub: neither 130 hex characters nor a readable "
                             f"file ({e.strerror})") from None
    try:
        return P.PublicKey(bytes.fromhex(raw)).raw.hex()
    except ValueError as e:
        raise ValueError(f"--release-pub: not a P-256 public key ({e})") from None


def build_config(args: argparse.Namespace, fog: P.PublicKey) -> dict[str, Any]:
    """config.json: board pins, then the fog, then transport and source, then --set."""
    cfg: dict[str, Any] = json.loads((BOARDS_DIR / BOARD_FILES[args.board]).read_text())
    cfg["fog"] = fog.id_hex
    cfg["fog_pub"] = fog.raw.hex()
    release = read_release_pub(args)
    if release is not None:
        cfg["release_pub"] = release  # without it the meter refuses every firmware image
    optional = {"transport": args.transport, "wifi_ssid": args.wifi_ssid,
                "wifi_password": args.wifi_password, "mqtt_host": args.mqtt_host,
                "mqtt_port": args.mqtt_port, "mqtt_root": args.mqtt_root,
                "rs485_address": args.rs485_address, "source": args.source}
    if args.transport == "mqtt" and not args.mqtt_lab:
        # TLS to the broker, pinned to the fog's CA; the meter's password is born on it
        optional.update(mqtt_ca=read_mqtt_ca(args), mqtt_tls_name=args.mqtt_tls_name)
    cfg.update({k: v for k, v in optional.items() if v is not None})
    for key, value in parse_set(args.set).items():
        if value is None:
            cfg.pop(key, None)  # --set key=null drops a board default
        else:
            cfg[key] = value
    return cfg


def check_config(cfg: dict[str, Any], on_board: bool, lab: bool = False) -> list[str]:
    """Settings the meter could not run with (usage errors); `lab`: --mqtt-lab."""
    bad = []
    transport = cfg.get("transport")
    if transport not in (None, "mqtt", "rs485"):
        bad.append(f"unknown transport {transport!r}")
    if transport == "mqtt":
        if not cfg.get("mqtt_host"):
            bad.append("--transport mqtt needs --mqtt-host")
        if on_board and not cfg.get("wifi_ssid"):
            bad.append("--transport mqtt on a board needs --wifi-ssid (the meter joins Wi-Fi)")
        if not cfg.get("mqtt_ca") and not lab:
            bad.append("--transport mqtt needs the broker's CA: --fog-data DIR (its broker/"
                       "ca.crt, made by `fog_node init`) or --mqtt-ca FILE; --mqtt-lab for a "
                       "plain, anonymous lab broker")
    if transport == "rs485":
        addr = cfg.get("rs485_address")
        if not (isinstance(addr, int) and not isinstance(addr, bool) and 1 <= addr <= 247):
            bad.append("--transport rs485 needs --rs485-address 1..247 (unique on the bus)")
        if cfg.get("rs485_tx") is None:
            bad.append("--transport rs485: the board config has no rs485_tx/_rx/_de pins")
    source = cfg.get("source", "sim")
    if source not in ("sim", "pulse", "modbus"):
        bad.append(f"unknown source {source!r}")
    if source == "pulse" and cfg.get("s0_pin") is None:
        bad.append("--source pulse: the board config has no s0_pin")
    if source == "modbus" and cfg.get("meter_tx") is None:
        bad.append("--source modbus: the board config has no meter_tx/_rx/_de pins")
    data_dir = str(cfg.get("data_dir", "/data"))
    if not data_dir.strip("/") or ".." in data_dir.split("/"):
        bad.append(f"data_dir {data_dir!r} must be a directory below the filesystem root")
    return bad


def parse_provision(text: str) -> tuple[str, str]:
    """(pub hex, id hex) from provision.py's output, checked: the id must be the pub's."""
    pub = re.search(r"^PUB ([0-9a-f]{130})\s*$", text, re.M)
    mid = re.search(r"^ID ([0-9a-f]{16})\s*$", text, re.M)
    if pub is None or mid is None:
        raise ValueError("provision.py printed no PUB/ID lines")
    key = P.PublicKey(bytes.fromhex(pub.group(1)))
    if key.id_hex != mid.group(1):
        raise ValueError(f"ID {mid.group(1)} is not the id of PUB ({key.id_hex})")
    return pub.group(1), mid.group(1)


def parse_secret(text: str) -> str | None:
    """The meter's broker password from provision.py's `MQTT <64 hex>` line, if it printed
    one (an MQTT meter does)."""
    m = re.search(r"^MQTT ([0-9a-f]{64})\s*$", text, re.M)
    return m.group(1) if m else None


def broker_hash(text: str) -> str | None:
    """The mosquitto hash of the broker password provision.py printed: all the fog gets of
    it (the password itself is never written on this side)."""
    secret = parse_secret(text)
    return hash_password(secret) if secret else None
