"""A client of the fog node's HTTP API (docs/PROTOCOL.md section 12): checkpoints, inclusion
and enrollment proofs, devices; what the audit tool and the dashboard read, and the
operator's enroll and revoke, and firmware pushes (docs/PROTOCOL.md section 22).

Readings' inclusion proofs and the device list are the auditor tier's: give the client the
fog's auditor.token (`token=`); enroll and revoke need its operator.token."""

from __future__ import annotations

import json
from typing import Any

from meterledger.clients.chain import ChainClient, ChainClientError


class FogClient(ChainClient):
    """The fog's JSON API over the same urllib transport as the chain's client
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

    def decide(self, action: str, pub: bytes, reason: str | None = None,
               mqtt_hash: str | None = None) -> dict[str, Any]:
        """POST /v1/enroll or /v1/revoke (`action`): the queued decision (operator)."""
        doc: dict[str, Any] = {"pub": pub.hex()}
        if reason is not None:
            doc["reason"] = reason
        if mqtt_hash is not None:
            doc["mqtt_hash"] = mqtt_hash
        status, out = self._call(f"/v1/{action}", json.dumps(doc).encode(), JSON)
        if status != 202:
            raise ChainClientError(f"POST /v1/{action}: HTTP {status}: {out.get('error', out)}")
        return out

    def push_firmware(self, dev: bytes, image: bytes) -> dict[str, Any]:
        """POST /v1/firmware: a signed image for meter `dev`, queued (operator)."""
        status, out = self._call(f"/v1/firmware?dev={dev.hex()}", image,
                                 "application/octet-stream")
        if status != 202:
            raise ChainClientError(f"POST /v1/firmware: HTTP {status}: {out.get('error', out)}")
        return out

    def firmware(self, dev: bytes) -> dict[str, Any]:
        """GET /v1/firmware: the last push to meter `dev` and the meter's answer."""
        return self.get("/v1/firmware", dev=dev.hex())


JSON = "application/json"
