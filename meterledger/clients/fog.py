"""A client of the fog node's HTTP API (docs/PROTOCOL.md section 16): checkpoints, inclusion
and enrollment proofs, devices; what the audit tool and the dashboard read."""

from __future__ import annotations

from typing import Any

from meterledger.clients.chain import ChainClient


class FogClient(ChainClient):
    """The fog's read-only JSON API over the same urllib transport as the chain's client
    (`get`, and its errors: unreachable or 5xx is ChainUnavailable, any other refusal a
    ChainClientError naming the endpoint)."""

    def checkpoint(self) -> dict[str, Any]:
        return self.get("/v1/checkpoint")

    def inclusion(self, dev: bytes, seq: int, size: int | None = None) -> dict[str, Any]:
        if size is None:
            return self.get("/v1/proof/inclusion", dev=dev.hex(), seq=seq)
        return self.get("/v1/proof/inclusion", dev=dev.hex(), seq=seq, size=size)

    def enrollment_proof(self, dev: bytes, size: int, before: int) -> dict[str, Any]:
        return self.get("/v1/proof/enrollment", dev=dev.hex(), size=size, before=before)

    def devices(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.get("/v1/devices")["devices"]
        return out
