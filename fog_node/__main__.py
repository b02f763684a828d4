"""python -m fog_node init | run | enroll | revoke

    python -m fog_node init --data-dir fog-data
    python -m fog_node run --config fog.toml [--mqtt-host H --mqtt-port P --data-dir D --http-port N]
    python -m fog_node run --rs485-port /dev/ttyUSB0 --rs485-addresses 1,2,5-9 [--rs485-baud 19200]
    python -m fog_node enroll --pub PUBHEX [--reason TEXT] [--data-dir D]
    python -m fog_node enroll --file provisioning.json
    python -m fog_node revoke --pub PUBHEX --reason TEXT

The config file is TOML with the keys of FogConfig (data_dir, mqtt_host, mqtt_port,
mqtt_root, http_host, http_port, seal_period_s, interval_s, grace_s, skew_s, batch_max,
batch_wait_s, chain_url, anchor_period_s, chain_poll_s, dispatch_pub, the RS485 bus
rs485_port, rs485_baud, rs485_addresses, rs485_timeout_s, rs485_slow_timeout_s, rs485_batch,
and the simulation clock sim_compress, sim_start, sim_epoch); a flag overrides
the file. With chain_url the node anchors its checkpoints to the dispatch chain and picks
up instructions addressed to it. With rs485_port (a serial device or pyserial URL) the node
is also Modbus RTU master of that RS485 bus, polling the meters at rs485_addresses (a TOML
list of integers, or "1,2,5-9" on the command line); MQTT runs beside it either way. While a node runs, enroll/revoke hand their
decision to it (it owns the log); otherwise they write it themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.faults import FaultReporter
from fog_node.chainlink.link import ChainLink
from fog_node.config import FogConfig, load_config, node_clock
from fog_node.enrollment import apply_request, queue_request
from fog_node.node import FogError, FogNode, init_data_dir, lock_data_dir
from fog_node.service import FogService
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.errors import MeterLedgerError
from meterledger.infra import config as cfg
from meterledger.infra.args import ArgumentParser


def _provisioning(path: Path) -> list[dict[str, Any]]:
    """A provisioning file: a JSON list of {"pub": hex, "reason"?}, or {"meters": [...]}."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FogError(f"provisioning file {path}: {e}") from None
    meters = doc.get("meters") if isinstance(doc, dict) else doc
    if not isinstance(meters, list) or not all(isinstance(m, dict) and "pub" in m for m in meters):
        raise FogError(f"provisioning file {path}: expected a list of {{\"pub\": hex}} objects")
    return meters


def decide(data_dir: Path, requests: list[dict[str, Any]]) -> None:
    held = lock_data_dir(data_dir)
    if held is None:  # a node is running: it owns the log, hand it the decisions
        for r in requests:
            queue_request(data_dir, r)
        print(f"{len(requests)} decision(s) queued for the running fog node")
        return
    try:
        node = FogNode(FogConfig(data_dir=data_dir), time.time)
        try:
            for r in requests:
                outcomes, _ = apply_request(node, r)
                print(f"{r['pub'][:16]}…: {r.get('status', 'active')}"
                      + (f", {len(outcomes)} quarantined message(s) processed" if outcomes else ""))
        finally:
            node.close()
    finally:
        held.close()


def _chain_link(node: FogNode, clock: Callable[[], float]) -> ChainLink | None:
    c = node.config
    if not c.chain_url:
        return None
    pin = P.PublicKey(bytes.fromhex(c.dispatch_pub)) if c.dispatch_pub else None
    link = ChainLink(node, ChainClient(c.chain_url), clock, c.anchor_period_s, pin)
    node.chain = link  # the API reports its state
    return link


def run(config: FogConfig) -> int:
    held = lock_data_dir(config.data_dir)
    if held is None:
        raise FogError(f"another fog node is running on {config.data_dir}")
    clock = node_clock(config, time.time)
    node = FogNode(config, clock)
    service = FogService(node, clock)
    link = _chain_link(node, clock)
    if link is not None:  # carry out the instructions the link picks up (docs/PROTOCOL.md section 20)
        service.dispatcher = Dispatcher(node, link, service.send_command, clock)
    # local faults: the configured action, then a fault transaction (docs/PROTOCOL.md s. 18)
    service.faults = FaultReporter(link, lambda: service.dispatcher, config.on_tamper)
    api = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        service.start()
        if link is not None:
            link.start(config.chain_poll_s)
        try:
            from fog_node.api import FogAPI

            api = FogAPI(node)
            http_port = api.start(config.http_host, config.http_port)
        except ImportError:  # the API module is optional for a headless node
            http_port = 0
        bus = (f", rs485 {config.rs485_port} addresses {','.join(map(str, config.rs485_addresses))}"
               if config.rs485_port else "")
        print(f"fog {node.id_hex} running: mqtt {config.mqtt_host}:{config.mqtt_port}, "
              f"http {config.http_host}:{http_port}, data {config.data_dir}{bus}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()
        if service.dispatcher is not None:
            service.dispatcher.close()
        if link is not None:
            link.stop()
            link.step()  # one last round: anchor what the final seal added, if the chain is up
            link.close()
        if api is not None:
            api.stop()
        node.close()
        held.close()
    print("fog stopped cleanly", flush=True)
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m fog_node") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_init = sub.add_parser("init", help="create the data dir and the fog key")
    p_init.add_argument("--data-dir", type=Path, default=Path("fog-data"))
    p_run = sub.add_parser("run", help="run the fog node")
    p_run.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML file ([fog] table); a flag overrides the file "
                            "(example: docs/examples/fog.toml)")
    cfg.add_flags(p_run, FogConfig)
    for name in ("enroll", "revoke"):
        p = sub.add_parser(name, help=f"{name} a meter by its public key")
        p.add_argument("--data-dir", type=Path, default=Path("fog-data"))
        p.add_argument("--pub", help="SEC1 public key, 130 hex characters")
        p.add_argument("--reason", default="provisioned" if name == "enroll" else "")
        if name == "enroll":
            p.add_argument("--file", type=Path, help="provisioning file (JSON)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.cmd == "init":
            key = init_data_dir(args.data_dir)
            print(f"fog id {key.id.hex()}\nfog pub {key.public_key.raw.hex()}")
            return 0
        if args.cmd == "run":
            flags = cfg.flag_values(args, FogConfig)
            return run(load_config(args.config, flags))
        status = "active" if args.cmd == "enroll" else "revoked"
        if args.cmd == "revoke" and not args.reason:
            ap.error("revoke needs --reason")
        if getattr(args, "file", None):
            reqs = [{"pub": m["pub"], "status": status, "reason": m.get("reason", args.reason)}
                    for m in _provisioning(args.file)]
        elif args.pub:
            reqs = [{"pub": args.pub, "status": status, "reason": args.reason}]
        else:
            ap.error(f"{args.cmd} needs --pub or --file")
        decide(args.data_dir, reqs)
        return 0
    except (MeterLedgerError, ValueError) as e:  # ValueError: a bad public key and the like
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


