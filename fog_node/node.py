"""A fog node's state on disk, opened as one object: key, log, registry, checkpoints, ingest.

data_dir/
  fog.key          the fog's P-256 private scalar (hex), created by `init`, mode 0600
  fog.pub          its public key (hex), for provisioning meters and the dispatch chain
  log.db           the Merkle log (SQLite WAL)
  registry.db      devices, readings index, quarantine, evidence, alerts
  checkpoints.db   the side-chain of signed checkpoints
  chain.db         the outbox of dispatch-chain transactions, and instructions received
  cooked.db        the cooked data's index of the log: readings, estimates, aggregates

The ingest thread and the HTTP API share one FogNode; `lock` serialises their use of the
SQLite connections (WAL lets readers run beside a writer, but a connection is one cursor
stream at a time).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fog_node.checkpoints import Checkpoints
from fog_node.cooking import CookConfig, Cooker
from fog_node.feeders import Feeder, FeederRules
from fog_node.ingest import Ingest
from fog_node.logstore import SQLiteLogStore
from fog_node.registry import Registry
from meterledger import wire as P


class FogError(RuntimeError):
    """A fog node operation that cannot go on; the message says why."""


@dataclass
class FogConfig:
    data_dir: Path = Path("fog-data")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_root: str = "grid"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    seal_period_s: float = 5.0  # a checkpoint at most this often when the log grows
    interval_s: int = 900  # and one at every interval close (+ grace)
    grace_s: int = 60  # late readings of an interval still count for its checkpoint
    skew_s: int = 300  # readings more than this far in the future are rejected
    batch_max: int = 1000  # messages per group commit
    batch_wait_s: float = 0.02  # how long the ingest thread waits to fill a group
    chain_url: str = ""  # the dispatch chain's API; empty: no anchoring
    anchor_period_s: float = 60.0  # anchor at most this often, and at every interval close
    chain_poll_s: float = 1.0  # outbox and instruction polling
    dispatch_pub: str = ""  # pin the dispatch key (hex) instructions must be signed by
    # RS485 bus master (docs/PROTOCOL.md section 17); runs beside MQTT when rs485_port is set
    rs485_port: str = ""  # pyserial device or URL ("/dev/ttyUSB0", "rfc2217://..."); "": no bus
    rs485_baud: int = 19200
    rs485_addresses: list[int] = field(default_factory=list)  # slave addresses, 1..247
    rs485_timeout_s: float = 0.0  # 0x04/0x41/0x44; 0: 0.1 s + a maximal answer's line time
    rs485_slow_timeout_s: float = 10.0  # 0x42/0x43: the meter verifies (and signs) P-256
    rs485_batch: int = 32  # readings fetched per meter per visit
    # cooked data (docs/PROTOCOL.md section 18): feeders and the thresholds of their alerts
    feeders: list[Feeder] = field(default_factory=list)  # none: one feeder "all"
    privacy_min_meters: int = 5  # smaller feeders are merged, or suppressed
    loss_alert_pct: float = 8.0
    outage_pct: float = 50.0
    voltage_low_dv: int = 2070
    voltage_high_dv: int = 2530
    on_tamper: str = "report"  # or "relay_off": open the relay of a meter reporting TAMPER
    # simulation only (demo, tests): run the node's clock `sim_compress` times faster than
    # real time, reading sim_start at real Unix time sim_epoch, like virtual meters' clocks
    sim_compress: float = 1.0
    sim_start: float = 0.0
    sim_epoch: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


def node_clock(config: FogConfig, real: Callable[[], float]) -> Callable[[], float]:
    """The node's clock: `real` itself, or the compressed simulation clock of the config."""
    if config.sim_compress == 1.0:
        return real
    start, epoch, k = config.sim_start, config.sim_epoch, config.sim_compress
    return lambda: start + (real() - epoch) * k


def init_data_dir(data_dir: Path) -> P.SigningKey:
    """Create the data dir and the fog key; refuses to overwrite an existing key."""
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path = data_dir / "fog.key"
    if key_path.exists():
        raise FogError(f"{key_path} exists already; a fog node keeps its key for life")
    key = P.SigningKey.generate()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.private_bytes().hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    (data_dir / "fog.pub").write_text(key.public_key.raw.hex() + "\n")
    return key


def load_key(data_dir: Path) -> P.SigningKey:
    key_path = data_dir / "fog.key"
    try:
        raw = bytes.fromhex(key_path.read_text().strip())
    except FileNotFoundError:
        raise FogError(f"no fog key at {key_path}: run `python -m fog_node init` first") from None
    except ValueError:
        raise FogError(f"{key_path} is not a hex private key") from None
    return P.SigningKey.from_bytes(raw)


class ChainView(Protocol):
    """What the API and metrics read of the chain link (fog_node.anchor.ChainLink)."""

    counters: Counter[str]

    @property
    def halted(self) -> str | None: ...

    def depth(self) -> int: ...

    def anchored_height(self) -> int: ...


class BusView(Protocol):
    """What metrics read of the RS485 bus master (fog_node.rs485.BusMaster)."""

    counters: Counter[str]


class FogNode:
    def __init__(self, config: FogConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        d = config.data_dir
        self.key = load_key(d)
        self.log = SQLiteLogStore(d / "log.db")
        self.registry = Registry(d / "registry.db")
        self.checkpoints = Checkpoints(d / "checkpoints.db", self.key, self.log)
        self.ingest = Ingest(self.key, self.log, self.registry, clock, config.skew_s)
        if config.on_tamper not in ("report", "relay_off"):
            raise FogError(f"on_tamper must be 'report' or 'relay_off', not {config.on_tamper!r}")
        rules = FeederRules(config.privacy_min_meters, config.loss_alert_pct,
                            outage_pct=config.outage_pct, voltage_low_dv=config.voltage_low_dv,
                            voltage_high_dv=config.voltage_high_dv)
        self.cooker = Cooker(self.key, self.log, self.registry, d / "cooked.db",
                             CookConfig(config.interval_s, tuple(config.feeders), rules))
        self.lock = threading.RLock()
        self.chain: ChainView | None = None  # set when the node anchors to a dispatch chain
        self.rs485: BusView | None = None  # set when the node is master of an RS485 bus
        with self.lock:
            self.ingest.recover()

    @property
    def id_hex(self) -> str:
        return self.key.id.hex()

    def close(self) -> None:
        with self.lock:
            self.cooker.close_db()
            self.checkpoints.close()
            self.registry.close()
            self.log.close()
