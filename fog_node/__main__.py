"""python -m fog_node init | run | devices | enroll | revoke | export (also `meterledger fog ...`)

    python -m fog_node init --data-dir fog-data [--broker-name broker.lan --broker-name 10.0.0.2]
    python -m fog_node run --config fog.toml [--mqtt-host H --mqtt-port P --data-dir D --http-port N]
    python -m fog_node run --rs485-port /dev/ttyUSB0 --rs485-addresses 1,2,5-9 [--rs485-baud 19200]
    python -m fog_node enroll --pub PUBHEX [--mqtt-hash HASH] [--reason TEXT] [--data-dir D]
    python -m fog_node enroll --file provisioning.json [--config fog.toml]
    python -m fog_node revoke --pub PUBHEX --reason TEXT
    python -m fog_node devices [--format table|json|ids]       # enrolled, pending, revoked
    python -m fog_node enroll --all-pending [--yes] | --dev ID  # meters whose birth was seen
    python -m fog_node run --sim-compress 900                  # a simulated clock, written to
                                                               # DATA_DIR/sim-clock.json

The config file is TOML with the keys of FogConfig (data_dir, mqtt_host, mqtt_port,
mqtt_root, http_host, http_port, seal_period_s, interval_s, grace_s, skew_s, batch_max,
batch_wait_s, chain_url, anchor_period_s, chain_poll_s, dispatch_pub, registry_chains, the RS485 bus
rs485_port, rs485_baud, rs485_addresses, rs485_timeout_s, rs485_slow_timeout_s, rs485_batch,
the simulation clock sim_compress, sim_start, sim_epoch, and the HTTP API's http_tls_cert,
http_tls_key, http_max_body, http_max_head, http_request_timeout_s, http_idle_timeout_s,
http_handler_timeout_s, http_max_connections, with chain_ca_file); a flag overrides
the file. The API's tiers need the data dir's auditor.token and operator.token (made by
init, or by run for an older data dir; docs/PROTOCOL.md section 12). With chain_url the node anchors its checkpoints to the dispatch chain and picks
up instructions addressed to it; with registry_chains (a TOML list of URLs, or
"url1,url2" on the command line) it anchors the same log to each of those chains too
(the green-certificate and carbon chains: anchors only, outbox
data_dir/chain-registry-HOST-PORT.db each). With rs485_port (a serial device or pyserial URL) the node
is also Modbus RTU master of that RS485 bus, polling the meters at rs485_addresses (a TOML
list of integers, or "1,2,5-9" on the command line); MQTT runs beside it either way. While a node runs, enroll/revoke hand their
decision to it (it owns the log); otherwise they write it themselves.

The node talks to the broker over TLS with its own credentials, and owns the broker's
access files (docs/PROTOCOL.md section 21): `init` makes the broker's CA, its certificate
(for the --broker-name names; default this machine's) and the fog's broker password in
data_dir/broker; enrolling a meter with its password hash (--mqtt-hash, or "mqtt_hash" in a
provisioning file) lets it on the broker, revoking it cuts it off. Give enroll/revoke the
node's --config when no node is running, so that they reload the broker it names
(broker_pid_file, broker_reload_cmd) with the node's topic root.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fog_node import devices
from fog_node.broker_access import hash_password
from fog_node.chainlink.devices import DeviceReporter
from fog_node.chainlink.dispatch import Dispatcher
from fog_node.chainlink.dr import DemandResponse
from fog_node.chainlink.faults import FaultReporter
from fog_node.chainlink.link import ChainLink, steps
from fog_node.chainlink.links import ChainLinks
from fog_node.config import FogConfig, load_config, sim_clock
from fog_node.enrollment import apply_request, queue_request, reload_broker
from fog_node.node import FogError, FogNode, init_broker, init_data_dir, lock_data_dir
from fog_node.service import FogService
from meterledger import wire as P
from meterledger.errors import ConfigError, MeterLedgerError
from meterledger.infra import config as cfg
from meterledger.infra import datadir, logs, simclock
from meterledger.infra.args import ArgumentParser


def _provisioning(path: Path) -> list[dict[str, Any]]:
    """A provisioning file: a JSON list of {"pub": hex, "reason"?, "mqtt_hash"?}, or
    {"meters": [...]}."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FogError(f"provisioning file {path}: {e}") from None
    meters = doc.get("meters") if isinstance(doc, dict) else doc
    if not isinstance(meters, list) or not all(isinstance(m, dict) and "pub" in m for m in meters):
        raise FogError(f"provisioning file {path}: expected a list of {{\"pub\": hex}} objects")
    return meters


def _data_dir_clock(data_dir: Path) -> Callable[[], float]:
    """The clock of the fog that last ran on `data_dir`: its simulated one if it ran on one
    (its decisions must be dated on the clock its meters keep), else the wall clock."""
    sim = simclock.in_data_dir(data_dir)
    return time.time if sim is None else sim.clock(time.time)


def decide(data_dir: Path, requests: list[dict[str, Any]], config: FogConfig | None = None,
           ) -> None:
    """Apply the decisions, or queue them for the node running on `data_dir`; `config` (the
    node's) names the broker to reload and the topic root, the defaults otherwise."""
    held = lock_data_dir(data_dir)
    if held is None:  # a node is running: it owns the log, hand it the decisions
        for r in requests:
            queue_request(data_dir, r)
        print(f"{len(requests)} decision(s) queued for the running fog node")
        return
    try:
        c = FogConfig(data_dir=data_dir) if config is None else \
            dataclasses.replace(config, data_dir=data_dir)
        node = FogNode(c, _data_dir_clock(data_dir))
        try:
            for r in requests:
                outcomes, _ = apply_request(node, r, reload=False)
                print(f"{r['pub'][:16]}…: {r.get('status', 'active')}"
                      + (f", {len(outcomes)} quarantined message(s) processed" if outcomes else ""))
            if node.access.changes:  # one broker reload for the whole batch
                reload_broker(node)
        finally:
            node.close()
    finally:
        held.close()


def _start_clock(config: FogConfig) -> Callable[[], float]:
    """The node's clock; a simulated one is written to DATA_DIR/sim-clock.json for the meters
    (and a stale file of an earlier simulation removed)."""
    sim = sim_clock(config, time.time)
    path = config.data_dir / simclock.SIM_FILE
    if sim is None:
        path.unlink(missing_ok=True)
        return time.time
    if not (config.sim_start or config.sim_epoch):
        # a restart with the same speed-up continues the simulated time the meters share
        before = simclock.in_data_dir(config.data_dir)
        if before is not None and before.compress == sim.compress:
            sim = before
    sim.write(config.data_dir)
    logging.getLogger("fog_node").warning(
        "%s; meters must share it: --sim-clock %s (or %s)", sim.describe(), path,
        sim.options())
    return sim.clock(time.time)


# real seconds a late reading may take on a simulated clock: a reconnect, a signature and a
# group commit take real time, which the speed-up turns into a late reading
SIM_GRACE_REAL_S = 3.0


def _sim_grace(config: FogConfig) -> FogConfig:
    """On a simulated clock, grace_s covers at least SIM_GRACE_REAL_S of real time, or every
    real-time delay would close intervals without their readings (false outages)."""
    need = math.ceil(SIM_GRACE_REAL_S * config.sim_compress)
    if config.sim_compress <= 1 or config.grace_s >= need:
        return config
    logging.getLogger("fog_node").info(
        "grace_s %d -> %d on the simulated clock (%g real s at x%g)", config.grace_s, need,
        SIM_GRACE_REAL_S, config.sim_compress)
    return dataclasses.replace(config, grace_s=need)


def _carry_out(node: FogNode, link: ChainLink, service: FogService,
               clock: Callable[[], float]) -> tuple[DemandResponse, DeviceReporter]:
    """What the dispatch chain's link picks up is carried out: instructions by the
    dispatcher (docs/PROTOCOL.md section 20), DR events with the meters' limits in the
    link's rounds (section 30); in the same rounds the meters' firmware and alarms are
    reported (section 29)."""
    node.chain = link  # the API reports its state
    service.dispatcher = Dispatcher(node, link, service.send_command, clock)
    demand = DemandResponse(link, service.dispatcher, clock)
    reports = DeviceReporter(link, clock)
    link.on_step = steps(demand.step, reports.step)
    return demand, reports


def run(config: FogConfig) -> int:
    devices.initialised(config.data_dir)
    config = _sim_grace(config)
    held = lock_data_dir(config.data_dir)
    if held is None:
        raise FogError(f"another fog node is running on {config.data_dir}")
    clock = _start_clock(config)
    node = FogNode(config, clock)
    service = FogService(node, clock)
    # the dispatch chain's link and the registry chains' (https verified with chain_ca_file)
    links = ChainLinks.configured(node, clock)
    link = links.main
    modules = _carry_out(node, link, service, clock) if link is not None else ()
    # local faults: the configured action, then a fault transaction (docs/PROTOCOL.md s. 18)
    service.faults = FaultReporter(link, lambda: service.dispatcher, config.on_tamper)
    api = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        service.start()
        links.start(config.chain_poll_s)  # a thread each: one chain away delays no other
        try:
            from fog_node.api import FogAPI

            api = FogAPI(node, registry_chains=links.statuses if links.registry else None)
            http_port = api.start(config.http_host, config.http_port)
        except ImportError:  # the API module is optional for a headless node
            http_port = 0
        bus = (f", rs485 {config.rs485_port} addresses {','.join(map(str, config.rs485_addresses))}"
               if config.rs485_port else "")
        mqtt = (f"{config.mqtt_host}:{config.mqtt_port} (lab: plain, anonymous)"
                if config.mqtt_security == "lab" else
                f"{config.mqtt_host}:{config.mqtt_tls_port} (TLS, user {node.access.fog_user})")
        chains = (f", anchoring to {len(links.registry)} registry chain(s)"
                  if links.registry else "")
        print(f"fog {node.id_hex} running: mqtt {mqtt}, "
              f"{api.http.scheme if api is not None else 'http'} {config.http_host}:"
              f"{http_port}, data {config.data_dir}{bus}{chains}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()
        for module in modules:  # before the dispatcher DR sends through
            module.close()
        if service.dispatcher is not None:
            service.dispatcher.close()
        # one last round each: anchor what the final seal added, where the chain is up
        links.stop()
        if api is not None:
            api.stop()  # before the links' databases close: /healthz and /metrics read them
        links.close()
        node.close()
        held.close()
    print("fog stopped cleanly", flush=True)
    return 0


def _init(data_dir: Path, broker_names: list[str]) -> int:
    """A new data dir; or, for one whose key came before issue 13, the broker's files."""
    try:
        key = init_data_dir(data_dir, broker_names)
    except ConfigError:
        key_only = init_broker(data_dir, broker_names)
        if key_only is None:
            raise
        key = key_only
        print(f"the fog key existed; made the broker's CA and certificate in {data_dir}/broker",
              file=sys.stderr)
    print(f"fog id {key.id.hex()}\nfog pub {key.public_key.raw.hex()}")
    return 0


def _requests(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The decisions of an enroll or revoke command line (usage errors exit 2)."""
    status = "active" if args.cmd == "enroll" else "revoked"
    if args.cmd == "revoke" and not args.reason:
        ap.error("revoke needs --reason")
    mqtt_hash, secret_file = getattr(args, "mqtt_hash", None), getattr(args, "mqtt_secret_file",
                                                                       None)
    if getattr(args, "file", None):
        if mqtt_hash or secret_file:
            ap.error("--mqtt-hash and --mqtt-secret-file go with --pub; a provisioning file "
                     "carries each meter's mqtt_hash")
        return [{"pub": m["pub"], "status": status, "reason": m.get("reason", args.reason)}
                | ({"mqtt_hash": m["mqtt_hash"]} if "mqtt_hash" in m else {})
                for m in _provisioning(args.file)]
    if not args.pub:
        ap.error(f"{args.cmd} needs --pub, --file" + (", --dev or --all-pending"
                                                      if args.cmd == "enroll" else ""))
    try:
        P.PublicKey(bytes.fromhex(args.pub))
    except ValueError:  # not hex, or not a point on P-256 (a ProtocolError)
        ap.error(f"--pub {args.pub[:20]}{'…' if len(args.pub) > 20 else ''}: not a SEC1 "
                 "P-256 public key (130 hex characters, 04...; a meter prints it at "
                 "provisioning, a virtual meter's is in `meterledger fog devices`)")
    req: dict[str, Any] = {"pub": args.pub, "status": status, "reason": args.reason}
    if secret_file:
        mqtt_hash = hash_password(datadir.read_secret(secret_file, "meter broker password"))
    if mqtt_hash:
        req["mqtt_hash"] = mqtt_hash
    return [req]


def _devices(args: argparse.Namespace) -> int:
    ls = devices.listing(args.url, args.data_dir)
    if args.format == "ids":
        print("\n".join(d["dev"] for d in ls.devices if d["status"] == "active"))
    elif args.format == "json":
        print(json.dumps({"devices": ls.devices, "pending": ls.pending,
                          "quarantined": ls.quarantined}, indent=1))
    else:
        print(devices.table(ls))
    return 0


def _pending_requests(ap: argparse.ArgumentParser, args: argparse.Namespace,
                      config: FogConfig | None) -> list[dict[str, Any]]:
    """Enrollment requests for pending meters (--dev, --all-pending), asked for first."""
    if args.pub or args.file:
        ap.error("--dev and --all-pending take the keys from the meters' births: drop "
                 "--pub/--file")
    url = args.url or (f"http://127.0.0.1:{config.http_port}" if config else
                       "http://127.0.0.1:8080")
    pending = {p["dev"]: p["pub"] for p in devices.from_api(url, args.data_dir).pending}
    wanted = sorted(pending) if args.all_pending else [d.lower() for d in args.dev]
    unknown = [d for d in wanted if d not in pending]
    if unknown:
        raise FogError(f"not pending at {url}: {', '.join(unknown)} (`meterledger fog "
                       "devices` lists the pending meters)")
    if not wanted:
        print("no pending meters")
        return []
    if args.all_pending and not args.yes:
        print("pending meters:\n  " + "\n  ".join(wanted))
        if not sys.stdin.isatty():
            ap.error("--all-pending asks before enrolling: give --yes when not at a terminal")
        if input(f"enroll these {len(wanted)} meter(s)? [y/N] ").strip().lower() not in (
                "y", "yes"):
            print("nothing enrolled")
            return []
    return [{"pub": pending[d], "status": "active", "reason": args.reason} for d in wanted]


# long: the argparse tree of every subcommand, then one dispatch
def main(argv: list[str] | None = None, prog: str = "python -m fog_node") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_init = sub.add_parser("init", help="create the data dir, the fog key and the broker's "
                                         "CA, certificate and fog password")
    p_init.add_argument("--data-dir", type=Path, default=Path("fog-data"),
                        help="the node's data directory (default: fog-data)")
    p_init.add_argument("--broker-name", action="append", default=[], metavar="NAME",
                        help="a DNS name or IP address clients reach the broker by, for its "
                             "certificate (repeatable; default: localhost, 127.0.0.1, ::1 and "
                             "this host's name)")
    p_run = sub.add_parser("run", help="run the fog node")
    p_run.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML file ([fog] table); a flag overrides the file "
                            "(example: docs/examples/fog.toml)")
    cfg.add_flags(p_run, FogConfig)
    for name in ("enroll", "revoke"):
        p = sub.add_parser(name, help=f"{name} a meter by its public key")
        p.add_argument("--data-dir", type=Path, default=Path("fog-data"),
                       help="the node's data directory (default: fog-data)")
        p.add_argument("--config", type=Path, metavar="FILE",
                       help="the node's TOML config: its broker to reload and topic root "
                            "(when no node is running; its data_dir is not used)")
        p.add_argument("--pub", help="SEC1 public key, 130 hex characters")
        p.add_argument("--reason", default="provisioned" if name == "enroll" else "",
                       help="why, recorded in the log" + (" (default: provisioned)"
                                                          if name == "enroll" else ""))
        if name == "enroll":
            p.add_argument("--file", type=Path, help="provisioning file (JSON)")
            p.add_argument("--dev", action="append", default=[], metavar="ID",
                           help="a pending meter by its id (16 hex, `fog devices` lists "
                                "them; repeatable): its key comes from its birth")
            p.add_argument("--all-pending", action="store_true",
                           help="every pending meter (asks first, unless --yes)")
            p.add_argument("--yes", action="store_true",
                           help="with --all-pending: do not ask")
            p.add_argument("--url", metavar="URL",
                           help="the running node's API for --dev/--all-pending (default: "
                                "http://127.0.0.1:HTTP_PORT of --config, else :8080)")
            creds = p.add_mutually_exclusive_group()
            creds.add_argument("--mqtt-hash", metavar="HASH",
                               help="the meter's broker password hash ($7$..., from "
                                    "flashing): lets the meter on the broker")
            creds.add_argument("--mqtt-secret-file", type=Path, metavar="FILE",
                               help="or the meter's password file (a virtual meter's "
                                    "DIR/mqtt.secret): only its hash is kept")
    p_dev = sub.add_parser("devices", help="list enrolled, pending and revoked meters")
    p_dev.add_argument("--data-dir", type=Path, default=Path("fog-data"),
                       help="the node's data directory, for its auditor.token and, with no "
                            "node running, its registry (default: fog-data)")
    p_dev.add_argument("--url", default="http://127.0.0.1:8080",
                       help="the running node's API (default: http://127.0.0.1:8080)")
    p_dev.add_argument("--format", choices=("table", "json", "ids"), default="table",
                       help="table for people, json for scripts, ids: the enrolled meters' "
                            "ids, one a line (default: table)")
    from fog_node import export  # issue 14: decoded readings out (docs/DATA.md)

    export.add_arguments(sub.add_parser("export", help=export.HELP, description=export.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    for p in sub.choices.values():
        logs.add_arguments(p)
    args = ap.parse_args(argv)
    logs.from_arguments(args)
    if args.cmd == "export":
        return export.run(args)
    try:
        if args.cmd == "init":
            return _init(args.data_dir, args.broker_name)
        if args.cmd == "run":
            flags = cfg.flag_values(args, FogConfig)
            return run(load_config(args.config, flags))
        if args.cmd == "devices":
            return _devices(args)
        config = load_config(args.config, {}) if args.config else None
        if args.cmd == "enroll" and (args.dev or args.all_pending):
            devices.initialised(args.data_dir)
            reqs = _pending_requests(ap, args, config)
            if not reqs:
                return 0
        else:
            reqs = _requests(ap, args)
            devices.initialised(args.data_dir)
        decide(args.data_dir, reqs, config)
        return 0
    except (MeterLedgerError, ValueError) as e:  # ValueError: a bad public key and the like
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


