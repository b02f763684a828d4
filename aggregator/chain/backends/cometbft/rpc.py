"""A small client of one CometBFT node's JSON-RPC over HTTP on loopback (its `rpc.laddr`):
what the consortium ledger asks it (broadcast a transaction, a block, its commit, status).
Errors: RPCUnavailable when the node does not answer, RPCError when it answers an error."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
from typing import Any

from aggregator.chain.ledger import AggregatorError, UnavailableError


class RPCUnavailable(UnavailableError):
    """The CometBFT node did not answer (stopped, starting, or catching up)."""


class RPCError(AggregatorError):
    """The CometBFT node answered with an error; the message is its own."""


class CometRPC:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                           "params": params}).encode()
        req = urllib.request.Request(self.url, data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as e:  # CometBFT answers RPC errors with 500 + JSON
            try:
                answer = json.loads(e.read())
            except ValueError:
                raise RPCUnavailable(f"CometBFT at {self.url}: HTTP {e.code}") from None
        except (OSError, ValueError) as e:
            raise RPCUnavailable(f"CometBFT at {self.url} does not answer: {e}") from None
        if "error" in answer:
            err = answer["error"]
            raise RPCError(f"CometBFT {method}: {err.get('message', '')} "
                           f"{err.get('data', '')}".strip())
        return answer["result"]

    def broadcast(self, tx: bytes) -> dict[str, Any]:
        """broadcast_tx_sync: CheckTx's answer (code, data base64, log)."""
        r: dict[str, Any] = self.call("broadcast_tx_sync", tx=base64.b64encode(tx).decode())
        return r

    def status(self) -> dict[str, Any]:
        r: dict[str, Any] = self.call("status")
        return r

    def commit(self, height: int) -> dict[str, Any]:
        """The signed header of `height`: header and commit (CometBFT's JSON)."""
        r: dict[str, Any] = self.call("commit", height=str(height))
        return r

    def tx_proof(self, tx: bytes) -> dict[str, Any]:
        """CometBFT's own proof of `tx` in its block's data hash (the /tx answer's `proof`:
        root_hash, data, proof {total, index, leaf_hash, aunts}) and the block height."""
        r = self.call("tx", hash=base64.b64encode(hashlib.sha256(tx).digest()).decode(),
                      prove=True)
        return {"height": int(r["height"]), "proof": r["proof"]}

    def validators(self, height: int) -> list[dict[str, Any]]:
        r = self.call("validators", height=str(height), per_page="100")
        v: list[dict[str, Any]] = r["validators"]
        return v
