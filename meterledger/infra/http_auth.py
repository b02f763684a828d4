"""The tiers of the services' HTTP APIs and the bearer tokens that open them.

Every route declares a `Tier`. PUBLIC routes answer anyone; AUDITOR and OPERATOR routes need
`Authorization: Bearer TOKEN` with the token of that tier or of a higher one (an operator
may do what an auditor may). Without a token (or with a token the API does not know) the
answer is 401 with `WWW-Authenticate: Bearer`; with the token of a lower tier it is 403.

`Tokens` holds each tier's token: a text given in code, or a file (a data dir's
auditor.token, operator.token) that is read again whenever it changes on disk, so replacing
the file rotates the token and removing it locks the tier, both without a restart. A token
file must be readable by its owner only (mode 0600, as `datadir.ensure_secret` writes it)
and hold at least `MIN_TOKEN` characters; one that is not is refused, and its tier stays
locked until it is fixed (fail closed, logged once per change of the file).

The presented token is compared with every tier's token in constant time (SHA-256 of both,
`hmac.compare_digest`, every tier compared whatever the first gave), so the answer's timing
tells nothing about how much of a token was right.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterledger.errors import ConfigError

__all__ = ["AUDITOR", "MIN_TOKEN", "OPERATOR", "PUBLIC", "Tier", "Tokens", "bearer",
           "operation_security", "security_schemes"]

log = logging.getLogger(__name__)

MIN_TOKEN = 16  # characters; init writes 64 hex characters (256 bits)


class Tier(enum.IntEnum):
    """Who may call a route; a higher tier may do what a lower one may."""

    PUBLIC = 0  # no household data: checkpoints, consistency proofs, the chain, health
    AUDITOR = 1  # household data: readings and their proofs, log entries, devices, metrics
    OPERATOR = 2  # changes: enroll, revoke, approve, dismiss

    @property
    def label(self) -> str:
        return self.name.lower()


PUBLIC, AUDITOR, OPERATOR = Tier.PUBLIC, Tier.AUDITOR, Tier.OPERATOR


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (scheme in any case), or None."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass
class _File:
    """A token file and what was read from it when it last changed."""

    path: Path
    what: str
    # (inode, size, mtime, ctime, mode) at the last look: ctime moves with chmod too
    seen: tuple[int, ...] | None = None
    digest: bytes | None = None

    def current(self) -> bytes | None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            return self._changed(None, f"cannot read the {self.what} {self.path}: {e}")
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
        if key == self.seen:
            return self.digest
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return self._changed(key, f"the {self.what} {self.path} is readable by others "
                                      f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        try:
            text = self.path.read_text().strip()
        except OSError as e:
            return self._changed(key, f"cannot read the {self.what} {self.path}: {e}")
        if len(text) < MIN_TOKEN:
            return self._changed(key, f"the {self.what} {self.path} holds {len(text)} "
                                      f"characters, fewer than {MIN_TOKEN}")
        self.seen, self.digest = key, _digest(text)
        return self.digest

    def _changed(self, key: tuple[int, ...] | None, problem: str) -> bytes | None:
        if key != self.seen or self.digest is not None:
            log.error("%s: its tier is locked until it is fixed", problem)
        self.seen, self.digest = key, None
        return None

    def check(self) -> None:
        """Raise ConfigError if the file cannot be used now (for a service's start)."""
        self.seen = None
        if self.current() is None:
            if not self.path.exists():
                raise ConfigError(f"no {self.what} at {self.path}")
            st = self.path.stat()
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"the {self.what} {self.path} is readable by others (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
            raise ConfigError(f"the {self.what} {self.path} holds fewer than {MIN_TOKEN} "
                              "characters")


class Tokens:
    """The tokens of an API's tiers above PUBLIC: each a text or a token file (a `Path`).

    A tier without a token can be reached with the token of a higher tier only; with no
    token at all, only PUBLIC routes answer.
    """

    def __init__(self, tokens: Mapping[Tier, str | Path | None] | None = None) -> None:
        self._texts: dict[Tier, bytes] = {}
        self._files: dict[Tier, _File] = {}
        self._lock = threading.Lock()
        for tier, source in (tokens or {}).items():
            if tier is PUBLIC or source is None:
                continue
            if isinstance(source, Path):
                self._files[tier] = _File(source, f"{tier.label} token")
            else:
                if len(source) < MIN_TOKEN:
                    raise ConfigError(f"the {tier.label} token has {len(source)} characters, "
                                      f"fewer than {MIN_TOKEN}")
                self._texts[tier] = _digest(source)

    def check(self) -> None:
        """Raise ConfigError naming a token file that cannot be used (called at start)."""
        with self._lock:
            for f in self._files.values():
                f.check()

    def files(self) -> dict[Tier, Path]:
        return {tier: f.path for tier, f in self._files.items()}

    def _digests(self) -> list[tuple[Tier, bytes | None]]:
        with self._lock:
            out: list[tuple[Tier, bytes | None]] = [(t, d) for t, d in self._texts.items()]
            out += [(t, f.current()) for t, f in self._files.items()]
        return out

    def tier_of(self, token: str) -> Tier | None:
        """The highest tier whose token `token` is, or None (compared in constant time)."""
        given = _digest(token)
        found: Tier | None = None
        for tier, digest in self._digests():
            # compare every tier, whatever the others gave: no early exit
            match = hmac.compare_digest(given, digest if digest is not None else bytes(32))
            if match and digest is not None and (found is None or tier > found):
                found = tier
        return found

    def configured(self) -> set[Tier]:
        return set(self._texts) | set(self._files)


def security_schemes() -> dict[str, Any]:
    """The OpenAPI `components.securitySchemes`: one bearer scheme per tier above PUBLIC."""
    return {t.label: {"type": "http", "scheme": "bearer",
                      "description": f"the {t.label} tier's token; a higher tier's token "
                                     "also passes"}
            for t in Tier if t is not PUBLIC}


def operation_security(tier: Tier) -> list[dict[str, list[str]]]:
    """An operation's OpenAPI `security`: [] when public, else any tier's token at or above
    `tier`."""
    if tier is PUBLIC:
        return []
    return [{t.label: []} for t in Tier if t >= tier]
