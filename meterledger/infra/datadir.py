"""A service's data directory: its key files, secret files and run lock.

Both services keep a P-256 key as a hex private scalar (mode 0600, written once, fsynced)
beside its public key (hex, one line), and take an exclusive flock on a lock file while
they run, so two processes never write the same databases.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from typing import IO

from meterledger.errors import ConfigError
from meterledger.wire import PublicKey, SigningKey


def _write_new_secret(path: Path, text: str) -> bool:
    """Write `text` to a new file readable by its owner only, fsynced; False if the file
    exists already (never overwritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def create_key(key_path: Path, pub_path: Path, exists: str) -> SigningKey:
    """Make a new key and write it (0600, fsynced) and its public key; refuses to replace
    one (`exists` says why, e.g. "a fog node keeps its key for life")."""
    key = SigningKey.generate()
    if not _write_new_secret(key_path, key.private_bytes().hex()):
        raise ConfigError(f"{key_path} exists already; {exists}")
    pub_path.write_text(key.public_key.raw.hex() + "\n")
    return key


def read_key(key_path: Path, what: str, missing: str) -> SigningKey:
    """The key at `key_path` (`what`: "fog key", ...); `missing` tells a user who has none
    yet what to do."""
    try:
        text = key_path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"no {what} at {key_path}: {missing}") from None
    except OSError as e:
        raise ConfigError(f"cannot read the key {key_path}: {e}") from None
    try:
        return SigningKey.from_bytes(bytes.fromhex(text))
    except ValueError:
        raise ConfigError(f"{key_path} is not a hex P-256 private key") from None


def read_pub(pub_path: Path, what: str = "public key") -> PublicKey:
    try:
        return PublicKey(bytes.fromhex(pub_path.read_text().strip()))
    except FileNotFoundError:
        raise ConfigError(f"no {what} at {pub_path}") from None
    except ValueError as e:  # bytes.fromhex, or ProtocolError (a ValueError)
        raise ConfigError(f"{pub_path}: {e}") from None


def ensure_secret(path: Path, what: str = "token") -> str:
    """A random bearer token (hex) in `path` (mode 0600), created if missing."""
    _write_new_secret(path, secrets.token_hex(32))
    return read_secret(path, what)


def read_secret(path: Path, what: str = "token") -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {path}: {e}") from None
    if not token:
        raise ConfigError(f"the {what} file {path} is empty")
    return token


def lock(path: Path) -> IO[str] | None:
    """Take an exclusive lock on `path` (created if missing); None if another process holds
    it. Keep the returned file open for as long as the lock is needed."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f
