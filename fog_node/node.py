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

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from fog_node.config import FogConfig
from fog_node.cooking.cooker import CookConfig, Cooker
from fog_node.cooking.feeders import FeederRules
from fog_node.ingest import Ingest
from fog_node.log.checkpoints import Checkpoints
from fog_node.log.store import SQLiteLogStore
from fog_node.registry import Registry
from meterledger import errors
from meterledger import wire as P
from meterledger.infra import datadir


class FogError(errors.MeterLedgerError, RuntimeError):
    """A fog node operation that cannot go on; the message says why."""


def init_data_dir(data_dir: Path) -> P.SigningKey:
    """Create the data dir and the fog key; refuses to overwrite an existing key."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return datadir.create_key(data_dir / "fog.key", data_dir / "fog.pub",
                              "a fog node keeps its key for life")


def load_key(data_dir: Path) -> P.SigningKey:
    return datadir.read_key(data_dir / "fog.key", "fog key",
                            "run `python -m fog_node init` first")


def lock_data_dir(data_dir: Path) -> IO[str] | None:
    """Take the data dir's run lock; None if a running fog node holds it."""
    return datadir.lock(data_dir / "fog.lock")


class ChainView(Protocol):
    """What the API and metrics read of the chain link (fog_node.chainlink.link.ChainLink)."""

    counters: Counter[str]

    @property
    def halted(self) -> str | None: ...

    def depth(self) -> int: ...

    def anchored_height(self) -> int: ...


class BusView(Protocol):
    """What metrics read of the RS485 bus master (fog_node.transport.rs485.master.BusMaster)."""

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
