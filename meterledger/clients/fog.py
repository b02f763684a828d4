"""A client of the fog node's HTTP API (docs/PROTOCOL.md section 12): checkpoints, inclusion
and enrollment proofs, devices; what the audit tool and the dashboard read (meters,
rejections, feeders, alerts, VEE, curves, checkpoints with anchors, the bus, bundles), and
the operator's enroll and revoke, and firmware pushes (docs/PROTOCOL.md section 22).

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

    def entry_proof(self, index: int, size: int) -> dict[str, Any]:
        """GET /v1/proof/entry (auditor): log entry `index` with its inclusion proof against
        the sealed checkpoint of `size` entries."""
        return self.get("/v1/proof/entry", index=index, size=size)

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

    # -- the dashboard's reads (fog_node.dashboard; docs/PROTOCOL.md section 12) --------------
    def _page(self, path: str, **query: Any) -> dict[str, Any]:
        """GET `path` with the query parameters that are not None."""
        return self.get(path, **{k: v for k, v in query.items() if v is not None})

    def meters(self, after: bytes | None = None, limit: int | None = None,
               state: str | None = None) -> dict[str, Any]:
        """GET /v1/meters (auditor): meters with state, last reading and birth, totals."""
        return self._page("/v1/meters", after=after.hex() if after is not None else None,
                          limit=limit, state=state)

    def rejections(self, intervals: int | None = None) -> dict[str, Any]:
        """GET /v1/rejections (auditor): counts by reason, last examples, a time series."""
        return self._page("/v1/rejections", intervals=intervals)

    def feeders(self, after: int | None = None, limit: int | None = None,
                feeder: str | None = None) -> dict[str, Any]:
        """GET /v1/feeders (public): each feeder's (or one's) aggregates per interval."""
        return self._page("/v1/feeders", feeder=feeder, after=after, limit=limit)

    def alerts(self, limit: int | None = None, before: int | None = None,
               faults_before: int | None = None) -> dict[str, Any]:
        """GET /v1/alerts (auditor): feeder faults and the registry's alerts, newest first."""
        return self._page("/v1/alerts", limit=limit, before=before,
                          faults_before=faults_before)

    def vee(self, dev: bytes | None = None, limit: int | None = None,
            before: int | None = None, estimates_before: int | None = None) -> dict[str, Any]:
        """GET /v1/vee (auditor): VEE findings and estimates, newest first."""
        return self._page("/v1/vee", dev=dev.hex() if dev is not None else None, limit=limit,
                          before=before, estimates_before=estimates_before)

    def curve(self, dev: bytes, after: int | None = None,
              limit: int | None = None) -> dict[str, Any]:
        """GET /v1/curve (auditor): one meter's Wh per interval, estimates marked."""
        return self._page("/v1/curve", dev=dev.hex(), after=after, limit=limit)

    def checkpoints(self, before: int | None = None,
                    limit: int | None = None) -> dict[str, Any]:
        """GET /v1/checkpoints (public): checkpoints newest first, with their anchors."""
        return self._page("/v1/checkpoints", before=before, limit=limit)

    def bus(self) -> dict[str, Any] | None:
        """GET /v1/bus (auditor): the RS485 bus's counters and addresses; None: no bus."""
        out: dict[str, Any] | None = self.get("/v1/bus")["bus"]
        return out

    def bundle(self, dev: bytes, seq: int) -> dict[str, Any]:
        """GET /v1/bundle (auditor): the proof bundle of reading (dev, seq), as
        `python -m tools.audit bundle` writes it."""
        return self.get("/v1/bundle", dev=dev.hex(), seq=seq)


JSON = "application/json"
