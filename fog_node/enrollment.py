"""Enrollment decisions from the CLI to a running fog node.

`python -m fog_node enroll|revoke` cannot open the databases a running node holds, so it
queues the decision as a file in data_dir/requests (written, then renamed: the node never
reads half a file); the node's ingest thread applies the queued files in name order, each
through `Ingest.decide`, publishes the acks that a newly enrolled meter's quarantined
readings earn, and removes the file. With no node running the CLI applies it directly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fog_node.node import FogError, FogNode

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


def apply_request(node: FogNode, request: dict[str, Any]) -> tuple[list[Any], Acks]:
    """An enrollment decision: {"pub": hex, "status": "active"|"revoked", "reason": str}."""
    try:
        pub = bytes.fromhex(request["pub"])
        status = request.get("status", "active")
        reason = str(request.get("reason", ""))
    except (KeyError, ValueError, TypeError) as e:
        raise FogError(f"bad enrollment request {request!r}: {e}") from None
    with node.lock:
        _, outcomes, acks = node.ingest.decide(pub, status, reason)
    return outcomes, acks


def apply_queued(node: FogNode, publish_acks: Callable[[Acks], None]) -> None:
    """Apply every queued request file, in order; a bad one is logged with its reason and
    removed, so it cannot hold up the ones behind it."""
    d = node.config.data_dir / REQUESTS
    if not d.is_dir():
        return
    for path in sorted(d.glob("*.json")):
        try:
            _, acks = apply_request(node, json.loads(path.read_text()))
            publish_acks(acks)
        except (FogError, ValueError) as e:
            log.error("enrollment request %s refused: %s", path.name, e)
        path.unlink()
