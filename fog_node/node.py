"""A fog node's state on disk, opened as one object: key, log, registry, checkpoints, ingest.

data_dir/
  fog.key          the fog's P-256 private scalar (hex), created by `init`, mode 0600
  fog.pub          its public key (hex), for provisioning meters and the dispatch chain
  log.db           the Merkle log (SQLite WAL)
  registry.db      devices, readings index, quarantine, evidence, alerts
  checkpoints.db   the side-chain of signed checkpoints
  chain.db         the outbox of dispatch-chain transactions, and instructions received
  cooked.db        the cooked data's index of the log: readings, estimates, aggregates
  broker/          the MQTT broker's CA, certificate, password and ACL files, and the fog's
                   broker password (fog_node.broker_access, docs/PROTOCOL.md section 21)
  auditor.token    bearer token of the HTTP API's auditor tier, operator.token the operator
                   tier's (hex, mode 0600; made by `init`, or by `run` for an older data dir)

The ingest thread and the HTTP API share one FogNode; `lock` serialises the use of its
SQLite connections (WAL lets readers run beside a writer, but a connection is one cursor
stream at a time). The API reads through connections of its own (fog_node.reads) and takes
the lock only for /metrics.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Protocol

from fog_node.broker_access import BrokerAccess
from fog_node.config import FogConfig
from fog_node.cooking.cooker import CookConfig, Cooker
from fog_node.cooking.feeders import FeederRules
from fog_node.ingest import Ingest
from fog_node.integrity import check_databases, check_log
from fog_node.log.checkpoints import Checkpoints
from fog_node.log.store import SQLiteLogStore
from fog_node.registry import Registry
from fog_node.storage import StorageHealth
from meterledger import errors
from meterledger import wire as P
from meterledger.infra import datadir, pki


class FogError(errors.MeterLedgerError, RuntimeError):
    """A fog node operation that cannot go on; the message says why."""


def init_data_dir(data_dir: Path, broker_names: Sequence[str] = ()) -> P.SigningKey:
    """Create the data dir, the fog key, and the broker's CA, certificate (for
    `broker_names`, default this machine's names) and the fog's broker password; refuses
    to overwrite an existing key."""
    if broker_names:
        pki.check_names(broker_names)  # before anything is written
    data_dir.mkdir(parents=True, exist_ok=True)
    key = datadir.create_key(data_dir / "fog.key", data_dir / "fog.pub",
                             "a fog node keeps its key for life")
    BrokerAccess(FogConfig(data_dir=data_dir), key.id.hex()).create(broker_names)
    ensure_tokens(data_dir)
    return key


AUDITOR_TOKEN, OPERATOR_TOKEN = "auditor.token", "operator.token"


def ensure_tokens(data_dir: Path) -> tuple[Path, Path]:
    """The HTTP API's token files (auditor, operator), each made (random, 0600) if missing."""
    for name in (AUDITOR_TOKEN, OPERATOR_TOKEN):
        datadir.ensure_secret(data_dir / name, name.replace(".", " "))
    return data_dir / AUDITOR_TOKEN, data_dir / OPERATOR_TOKEN


def init_broker(data_dir: Path, broker_names: Sequence[str] = ()) -> P.SigningKey | None:
    """The broker's CA, certificate and fog password for a data dir whose key came before
    them (issue 13); None if there is no key, or the broker's files are there already."""
    if not (data_dir / "fog.key").is_file():
        return None
    key = load_key(data_dir)
    access = BrokerAccess(FogConfig(data_dir=data_dir), key.id.hex())
    if access.exists():
        return None
    access.create(broker_names)
    return key


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


def stated_meters(config: FogConfig) -> tuple[bytes, ...]:
    """The meters the fog signs type-14 statements of: its generators, then the households
    whose owners consented to the market (docs/PROTOCOL.md section 27), each once."""
    ids = dict.fromkeys([*config.generators, *config.market_meters])
    return tuple(bytes.fromhex(g) for g in ids)


class FogNode:
    def __init__(self, config: FogConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        d = config.data_dir
        self.key = load_key(d)
        # a damaged file, or a log that no longer matches its own signed checkpoint: refuse
        # to start rather than serve proofs that fail (fog_node.integrity)
        check_databases(d)
        self.log = SQLiteLogStore(d / "log.db")
        self.checkpoints = Checkpoints(d / "checkpoints.db", self.key, self.log)
        try:
            check_log(d, self.log, self.checkpoints, self.key.public_key)
        except BaseException:
            self.checkpoints.close()
            self.log.close()
            raise
        self.registry = Registry(d / "registry.db")
        self.ingest = Ingest(self.key, self.log, self.registry, clock, config.skew_s,
                             config.quarantine_per_meter, config.quarantine_total)
        if config.on_tamper not in ("report", "relay_off"):
            raise FogError(f"on_tamper must be 'report' or 'relay_off', not {config.on_tamper!r}")
        rules = FeederRules(config.privacy_min_meters, config.loss_alert_pct,
                            outage_pct=config.outage_pct, voltage_low_dv=config.voltage_low_dv,
                            voltage_high_dv=config.voltage_high_dv)
        self.cooker = Cooker(self.key, self.log, self.registry, d / "cooked.db",
                             CookConfig(config.interval_s, tuple(config.feeders), rules,
                                        generators=stated_meters(config)))
        self.lock = threading.RLock()
        self.storage = StorageHealth()  # a storage fault now, failures by kind (fog_node.storage)
        self.chain: ChainView | None = None  # set when the node anchors to a dispatch chain
        self.rs485: BusView | None = None  # set when the node is master of an RS485 bus
        # set when the node republishes for Home Assistant (fog_node.republish.Republisher)
        self.republish_counters: Counter[str] | None = None
        self.access = BrokerAccess(config, self.id_hex)  # who may use the MQTT broker
        with self.lock:
            self.registry.backfill_decisions(self.log.size(), self.log.entry)  # once, if old
            self.ingest.recover()
            # entries a crash logged but did not index (a chunk of statements or aggregates
            # sealed just before it): an anchor carries what the index holds
            self.cooker.catch_up(int(clock()))

    @property
    def id_hex(self) -> str:
        return self.key.id.hex()

    def close(self) -> None:
        with self.lock:
            self.ingest.record.flush()  # the rejections counted since the last write
            self.cooker.close_db()
            self.checkpoints.close()
            self.registry.close()
            self.log.close()
