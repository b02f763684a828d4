"""The CLI's calls to a running aggregator over its HTTP API (docs/PROTOCOL.md section 15).

Only the CLI uses this; the fog node has its own client (it never imports aggregator).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from aggregator.chain.ledger import AggregatorError
from aggregator.chain.store import StoredBlock
from meterledger.clients.chain import base_url_of

TIMEOUT_S = 60.0


class RemoteError(AggregatorError):
    """The aggregator could not be reached or answered something unexpected."""


def call(url: str, path: str, body: bytes | None = None,
         token: str | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) of GET `path`, or POST of `body` when given; `token` goes
    in an Authorization: Bearer header."""
    headers = {"Content-Type": "application/cbor"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = base_url_of(url)  # "localhost:8090" as a user types it: http
    req = urllib.request.Request(url + path, data=body, method="GET" if body is None
                                 else "POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise RemoteError(f"cannot reach the aggregator at {url}: {e}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise RemoteError(f"{url}{path} answered {status} with no JSON: {text[:80]!r}") from None
    if not isinstance(doc, dict):
        raise RemoteError(f"{url}{path} answered {status} with {type(doc).__name__}, not an object")
    return status, doc


def get(url: str, path: str) -> dict[str, Any]:
    status, doc = call(url, path)
    if status != 200:
        raise RemoteError(f"GET {path} answered {status}: {doc.get('detail', doc.get('error'))}")
    return doc


def blocks(url: str) -> Iterator[StoredBlock]:
    """Every block from genesis to the head as of the first request."""
    head = get(url, "/v1/head")
    for h in range(int(head["height"]) + 1):
        b = get(url, f"/v1/blocks/{h}")
        try:
            yield StoredBlock(int(b["height"]), bytes.fromhex(b["hash"]),
                              bytes.fromhex(b["header"]),
                              tuple(bytes.fromhex(t) for t in b["txs"]))
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteError(f"block {h} from {url} is not in the API's shape: {e!r}") from None
