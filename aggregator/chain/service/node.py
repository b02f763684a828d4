"""The aggregator's data dir and configuration.

data_dir/
  dispatch.key     the dispatch key's P-256 private scalar (hex), created by `init`, mode 0600
  dispatch.pub     its public key (hex, one line): the chain's trust anchor for verifiers
  chain.db         the chain (SQLite WAL): blocks and the state derived from them
  aggregator.lock  held (flock) by the process that owns chain.db for writing
  aggregator.url   the running service's base URL (written when it listens, removed at stop)
  dispatch.token   the API's operator token: POST /v1/suggestions/{id}/approve|dismiss (hex,
                   mode 0600; created by `init`, or by `run` for a data dir made before it)
  auditor.token    the API's auditor token: /metrics (hex, mode 0600; the same)
  suggestions.db   suggestions and the dispatcher's decisions on them (aggregator.dispatch.suggestions)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aggregator.chain.backends.cometbft.network import CONSORTIUM
from aggregator.chain.backends.embedded import EmbeddedLedger, create_genesis
from aggregator.chain.ledger import AggregatorError
from aggregator.chain.store import SQLiteBlockStore
from meterledger import errors
from meterledger import wire as P
from meterledger.infra import config as cfg
from meterledger.infra import datadir, simclock
from meterledger.infra import http as H
from meterledger.infra.config import setting
from meterledger.infra.http_settings import HTTPSettings

KEY, PUB, CHAIN, LOCK, URL = "dispatch.key", "dispatch.pub", "chain.db", "aggregator.lock", \
    "aggregator.url"
TOKEN = "dispatch.token"  # the operator tier's
AUDITOR_TOKEN = "auditor.token"


class ConfigError(AggregatorError, errors.ConfigError):
    """A data dir, key or configuration that cannot be used; the message says why."""


@dataclass
class AggregatorConfig(HTTPSettings):
    data_dir: Path = setting(Path("aggregator-data"), help="the chain node's data directory")
    host: str = setting("127.0.0.1", help="address the HTTP API listens on")
    http_port: int = setting(8090, help="HTTP API port (0: any free port)", min=0,
                             max=65535)
    # HTTP API (issue 13): TLS and limits (HTTPSettings; docs/PROTOCOL.md section 15), with
    # the chain's own body cap and handler time (POST /v1/tx waits for its block)
    http_max_body: int = setting(64 * 1024, help="largest POST body read; beyond it refused "
                                                 "unread (bytes)", min=4096,
                                 max=16 * 1024 * 1024)
    http_handler_timeout_s: float = setting(60.0, help="seconds a client waits for an answer "
                                                       "(POST /v1/tx: its block) before a 503",
                                            min=0.05, max=3600)
    # a consortium validator (a data dir made by `meterledger chain testnet`)
    commit_timeout_s: float = setting(30.0, help="consortium: seconds POST /v1/tx waits for "
                                                 "its transaction's block before a 503 (it may "
                                                 "still land)", min=1, max=3600)
    # simulation only (labs, a walk-through): block time on a fog's simulated clock, so that
    # instructions expire on the clock its meters keep (meterledger/infra/simclock.py)
    sim_clock: str = setting("", help=simclock.HELP_CLOCK + "; empty: real time",
                             metavar="PATH")

    def clock(self) -> Callable[[], float]:
        """Block time: the wall clock, or the simulated clock named by sim_clock."""
        if not self.sim_clock:
            return time.time
        return simclock.read(Path(self.sim_clock)).clock(time.time)


def load_config(path: Path | None, overrides: dict[str, Any]) -> AggregatorConfig:
    """A TOML file (an [aggregator] table or top-level keys: AggregatorConfig's), then the
    flags that were given."""
    return cfg.load(AggregatorConfig, path, "aggregator", overrides)


def init_data_dir(data_dir: Path, t: int, name: str = "dispatch") -> P.SigningKey:
    """Create the dispatch key and the chain with its genesis block (sealed at time t)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    chain_path = data_dir / CHAIN
    if chain_path.exists():
        raise ConfigError(f"{chain_path} exists already; a chain is created once")
    key = datadir.create_key(data_dir / KEY, data_dir / PUB, "a chain is created once")
    store = SQLiteBlockStore(chain_path)
    try:
        create_genesis(store, key, t, name)
    finally:
        store.close()
    ensure_tokens(data_dir)
    return key


def ensure_token(data_dir: Path) -> str:
    """The data dir's dispatch token, created (random, mode 0600) if missing."""
    return datadir.ensure_secret(data_dir / TOKEN, "dispatch token")


def ensure_tokens(data_dir: Path) -> H.Tokens:
    """The API's tokens as files (read again when replaced): auditor.token and the dispatch
    token as the operator's; each created (random, mode 0600) if missing."""
    ensure_token(data_dir)
    datadir.ensure_secret(data_dir / AUDITOR_TOKEN, "auditor token")
    return H.Tokens({H.AUDITOR: data_dir / AUDITOR_TOKEN, H.OPERATOR: data_dir / TOKEN})


def read_token(path: Path) -> str:
    return datadir.read_secret(path, "dispatch token")


def load_key(data_dir: Path) -> P.SigningKey:
    return datadir.read_key(data_dir / KEY, "dispatch key",
                            "run `python -m aggregator init` first")


def load_pub(data_dir: Path) -> P.PublicKey:
    return datadir.read_pub(data_dir / PUB, "dispatch public key")


def open_ledger(data_dir: Path, clock: Callable[[], float]) -> EmbeddedLedger:
    if (data_dir / CONSORTIUM).is_file():  # its blocks are CometBFT's: never sealed here
        raise ConfigError(f"{data_dir} is a consortium validator's data dir: start it "
                          "(`meterledger chain up --dir NETWORK`) or send through a running "
                          "validator with --chain URL")
    chain_path = data_dir / CHAIN
    if not chain_path.exists():
        raise ConfigError(f"no chain at {chain_path}: run `python -m aggregator init` first")
    key = load_key(data_dir)
    store = SQLiteBlockStore(chain_path)
    try:
        return EmbeddedLedger(store, key, clock)
    except BaseException:
        store.close()
        raise


def lock_data_dir(data_dir: Path) -> IO[str] | None:
    """Take the data dir's lock; None if another process (a running aggregator) holds it."""
    if not data_dir.is_dir():
        raise ConfigError(f"no data dir {data_dir}: run `python -m aggregator init` first")
    return datadir.lock(data_dir / LOCK)


def write_url(data_dir: Path, url: str) -> None:
    tmp = data_dir / (URL + ".tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, data_dir / URL)


def read_url(data_dir: Path) -> str | None:
    try:
        return (data_dir / URL).read_text().strip() or None
    except FileNotFoundError:
        return None
