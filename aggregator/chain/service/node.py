"""The aggregator's data dir and configuration.

data_dir/
  dispatch.key     the dispatch key's P-256 private scalar (hex), created by `init`, mode 0600
  dispatch.pub     its public key (hex, one line): the chain's trust anchor for verifiers
  chain.db         the chain (SQLite WAL): blocks and the state derived from them
  aggregator.lock  held (flock) by the process that owns chain.db for writing
  aggregator.url   the running service's base URL (written when it listens, removed at stop)
  dispatch.token   the bearer token of POST /v1/suggestions/{id}/approve|dismiss (hex, mode
                   0600; created by `init`, or by `run` for a data dir made before it existed)
  suggestions.db   suggestions and the dispatcher's decisions on them (aggregator.dispatch.suggestions)
"""

from __future__ import annotations

import fcntl
import os
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aggregator.chain.backends.embedded import EmbeddedLedger, create_genesis
from aggregator.chain.ledger import AggregatorError
from aggregator.chain.store import SQLiteBlockStore
from meterledger import wire as P

KEY, PUB, CHAIN, LOCK, URL = "dispatch.key", "dispatch.pub", "chain.db", "aggregator.lock", \
    "aggregator.url"
TOKEN = "dispatch.token"


class ConfigError(AggregatorError):
    """A data dir, key or configuration that cannot be used; the message says why."""


@dataclass
class AggregatorConfig:
    data_dir: Path = Path("aggregator-data")
    host: str = "127.0.0.1"
    http_port: int = 8090


_KEYS: dict[str, Callable[[Any], Any]] = {"data_dir": Path, "host": str, "http_port": int}


def load_config(path: Path | None, overrides: dict[str, Any]) -> AggregatorConfig:
    """A TOML file (an [aggregator] table or top-level keys data_dir, host, http_port), then
    the flags that were given."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config {path}: {e}") from None
        doc = doc.get("aggregator", doc)
        for key, value in doc.items():
            if key not in _KEYS:
                raise ConfigError(f"config {path}: unknown key {key!r} "
                                  f"(known: {', '.join(_KEYS)})")
            try:
                values[key] = _KEYS[key](value)
            except (TypeError, ValueError):
                raise ConfigError(f"config {path}: {key} = {value!r} is not a "
                                  f"{_KEYS[key].__name__}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return AggregatorConfig(**values)


def init_data_dir(data_dir: Path, t: int, name: str = "dispatch") -> P.SigningKey:
    """Create the dispatch key and the chain with its genesis block (sealed at time t)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path, chain_path = data_dir / KEY, data_dir / CHAIN
    for p in (key_path, chain_path):
        if p.exists():
            raise ConfigError(f"{p} exists already; a chain is created once")
    key = P.SigningKey.generate()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.private_bytes().hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    (data_dir / PUB).write_text(key.public_key.raw.hex() + "\n")
    store = SQLiteBlockStore(chain_path)
    try:
        create_genesis(store, key, t, name)
    finally:
        store.close()
    ensure_token(data_dir)
    return key


def ensure_token(data_dir: Path) -> str:
    """The data dir's dispatch token, created (random, mode 0600) if missing."""
    path = data_dir / TOKEN
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return read_token(path)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the dispatch token {path}: {e}") from None
    if not token:
        raise ConfigError(f"the dispatch token file {path} is empty")
    return token


def load_key(data_dir: Path) -> P.SigningKey:
    path = data_dir / KEY
    try:
        return P.SigningKey.from_bytes(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        raise ConfigError(f"no dispatch key at {path}: run `python -m aggregator init` "
                          "first") from None
    except ValueError:
        raise ConfigError(f"{path} is not a hex P-256 private key") from None


def load_pub(data_dir: Path) -> P.PublicKey:
    path = data_dir / PUB
    try:
        return P.PublicKey(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        raise ConfigError(f"no dispatch public key at {path}") from None
    except ValueError as e:  # bytes.fromhex, or ProtocolError (a ValueError)
        raise ConfigError(f"{path}: {e}") from None


def open_ledger(data_dir: Path, clock: Callable[[], float]) -> EmbeddedLedger:
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
    f = open(data_dir / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def write_url(data_dir: Path, url: str) -> None:
    tmp = data_dir / (URL + ".tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, data_dir / URL)


def read_url(data_dir: Path) -> str | None:
    try:
        return (data_dir / URL).read_text().strip() or None
    except FileNotFoundError:
        return None
