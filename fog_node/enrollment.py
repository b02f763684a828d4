"""Enrollment decisions from the CLI to a running fog node.

`python -m fog_node enroll|revoke` cannot open the databases a running node holds, so it
queues the decision as a file in data_dir/requests (written, then renamed: the node never
reads half a file); the node's ingest thread applies the queued files in name order, each
through `Ingest.decide`, publishes the acks that a newly enrolled meter's quarantined
readings earn, and removes the file. With no node running the CLI applies it directly.

A decision also sets the meter's access to the MQTT broker (fog_node.broker_access): an
activation with "mqtt_hash" (the mosquitto `$7$` hash of the password born on the meter)
grants it, a revocation takes it away, and the broker is reloaded at once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fog_node.broker_access import AccessError, hash_error
from fog_node.node import FogError, FogNode
from meterledger import wire as P

log = logging.getLogger("fog_node")
REQUESTS = "requests"
Acks = list[tuple[bytes, bytes]]


def queue_request(data_dir: Path, request: dict[str, Any]) -> Path:
    """Hand an enrollment decision to the running node (atomic: write, then rename)."""
    d = data_dir / REQUESTS
    d.mkdir(exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}.json"
    tmp = d / (name + ".tmp")
    tmp.write_text(json.dumps(request))
    os.replace(tmp, d / name)
    return d / name


def apply_request(node: FogNode, request: dict[str, Any], reload: bool = True,
                  ) -> tuple[list[Any], Acks]:
    """An enrollment decision: {"pub": hex, "status": "active"|"revoked", "reason": str,
    "mqtt_hash"?: the meter's broker password hash}. `reload`: reload the broker if the
    meter's broker access changed (False: the caller reloads once after a batch)."""
    try:
        pub = bytes.fromhex(request["pub"])
        status = request.get("status", "active")
        reason = str(request.get("reason", ""))
    except (KeyError, ValueError, TypeError) as e:
        raise FogError(f"bad enrollment request {request!r}: {e}") from None
    mqtt_hash = request.get("mqtt_hash")
    if mqtt_hash is not None and hash_error(mqtt_hash) is not None:
        raise FogError(f"bad enrollment request for {request['pub'][:16]}…: mqtt_hash: "
                       f"{hash_error(mqtt_hash)}")
    with node.lock:
        _, outcomes, acks = node.ingest.decide(pub, status, reason)
    if set_broker_access(node, P.PublicKey(pub).id.hex(), status, mqtt_hash) and reload:
        reload_broker(node)
    return outcomes, acks


def set_broker_access(node: FogNode, dev_hex: str, status: str, mqtt_hash: str | None) -> bool:
    """Grant (active, with a hash) or revoke a meter's broker access in the broker's files;
    True if they changed. A failure is logged, since the decision itself stands (and the
    next start drops a revoked meter from the files: FogService)."""
    access = node.access
    try:
        if status == "active":
            changed = mqtt_hash is not None and access.grant(dev_hex, mqtt_hash)
        else:
            changed = access.revoke(dev_hex)
    except AccessError as e:
        log.error("meter %s %s, but its broker access was not updated: %s", dev_hex,
                  "enrolled" if status == "active" else status, e)
        return False
    if changed:
        log.info("meter %s: broker access %s", dev_hex,
                 "granted" if status == "active" else "removed")
    return changed


def reload_broker(node: FogNode) -> None:
    """Make the broker load its access files, and wait until it has; logged either way."""
    try:
        how = node.access.reload()
    except AccessError as e:
        log.error("broker access changed, but %s", e)
        return
    log.info("broker access files %s", f"reloaded: {how}" if how else
             "written; broker not reloaded (no broker_pid_file or broker_reload_cmd)")


def apply_queued(node: FogNode, publish_acks: Callable[[Acks], None]) -> None:
    """Apply every queued request file, in order; a bad one is logged with its reason and
    removed, so it cannot hold up the ones behind it."""
    d = node.config.data_dir / REQUESTS
    if not d.is_dir():
        return
    before = node.access.changes
    for path in sorted(d.glob("*.json")):
        try:
            _, acks = apply_request(node, json.loads(path.read_text()), reload=False)
            publish_acks(acks)
        except (FogError, ValueError) as e:
            log.error("enrollment request %s refused: %s", path.name, e)
        path.unlink()
    if node.access.changes != before:  # one reload for the whole batch
        reload_broker(node)
