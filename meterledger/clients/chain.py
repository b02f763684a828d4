"""The fog node's client of the dispatch chain's HTTP API (docs/PROTOCOL.md section 15).

The fog talks to the chain over its API only (it never imports the aggregator), so this is
a small urllib client whose errors separate "the chain is away, try again later"
(ChainUnavailable) from "the chain looked at it and said no" (ChainRefused).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from meterledger import errors


class ChainClientError(errors.MeterLedgerError, RuntimeError):
    """Talking to the dispatch chain failed; the message says how."""


class ChainUnavailable(ChainClientError, errors.UnavailableError):
    """No usable answer (connection refused, timeout, 5xx): retry later."""


class ChainRefused(ChainClientError, errors.RefusedError):
    """The chain refused a transaction; `reason` is its stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Receipt:
    digest: bytes
    height: int
    index: int
    duplicate: bool = False  # the chain already held this exact transaction


class ChainClient:
    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(self.base_url + path, data=body, method="POST" if body
                                     is not None else "GET")
        if body is not None:
            req.add_header("Content-Type", "application/cbor")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        except (OSError, urllib.error.URLError) as e:  # refused, reset, timeout, DNS
            raise ChainUnavailable(f"{self.base_url}{path}: {e}") from None
        if status >= 500:
            raise ChainUnavailable(f"{self.base_url}{path}: HTTP {status}")
        try:
            out = json.loads(text)
        except ValueError:
            raise ChainUnavailable(f"{self.base_url}{path}: HTTP {status} with a body that "
                                   "is not JSON") from None
        if not isinstance(out, dict):
            raise ChainUnavailable(f"{self.base_url}{path}: answer is not a JSON object")
        return status, out

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        q = f"?{urlencode(query)}" if query else ""
        status, out = self._call(path + q)
        if status != 200:
            raise ChainClientError(f"GET {path}{q}: HTTP {status}: {out.get('error', out)}")
        return out

    def submit(self, tx: bytes) -> Receipt:
        status, out = self._call("/v1/tx", tx)
        if status in (200, 409) and "height" in out:
            return Receipt(bytes.fromhex(out["digest"]), int(out["height"]), int(out["index"]),
                           duplicate=status == 409)
        raise ChainRefused(str(out.get("error", f"http_{status}")), str(out.get("detail", "")))

    def head(self) -> dict[str, Any]:
        return self.get("/v1/head")

    def participants(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.get("/v1/participants")["participants"]
        return out

    def anchors(self, fog_hex: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.get("/v1/anchors", fog=fog_hex)["anchors"]
        return out

    def instructions(self, fog_hex: str, after: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.get("/v1/instructions", fog=fog_hex,
                                              after=after)["instructions"]
        return out

    def tx(self, digest_hex: str) -> dict[str, Any]:
        return self.get(f"/v1/tx/{digest_hex}")
