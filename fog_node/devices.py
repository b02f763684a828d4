"""`meterledger fog devices`: the meters a fog knows, as a table an operator reads, and the
pending ones that `enroll --all-pending` (or `enroll --dev ID`) can take in.

A running node answers from its API (GET /v1/devices, the auditor tier, with the data dir's
auditor.token): enrolled and revoked meters from the registry, and pending meters, those
whose birth the node saw but that nobody enrolled (only a running node sees births). With no
node running the registry is read straight from the data dir (read-only), without pending
meters.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fog_node.node import AUDITOR_TOKEN, FogError
from fog_node.reads import RegistryView, read_only
from meterledger.clients.chain import ChainClientError, ChainUnavailable
from meterledger.clients.fog import FogClient
from meterledger.infra import datadir


@dataclass(frozen=True)
class Listing:
    devices: list[dict[str, Any]]   # enrolled and revoked (the registry)
    pending: list[dict[str, Any]]   # {"dev", "pub"}: births seen, not enrolled
    quarantined: int
    source: str                     # where it came from, for the table's footer


def initialised(data_dir: Path) -> None:
    """FogError telling the user to run init if `data_dir` holds no fog."""
    if not (data_dir / "fog.key").is_file():
        raise FogError(f"no fog data in {data_dir}: run `meterledger fog init --data-dir "
                       f"{data_dir}` first")


def from_api(url: str, data_dir: Path, token: str | None = None) -> Listing:
    """The running node's listing; ChainUnavailable if it does not answer."""
    initialised(data_dir)
    if token is None:
        token = datadir.read_secret(data_dir / AUDITOR_TOKEN, "auditor token")
    doc = FogClient(url, token=token).get("/v1/devices")
    return Listing(list(doc.get("devices", [])), list(doc.get("pending", [])),
                   int(doc.get("quarantined", 0)), f"the running fog at {url}")


def from_data_dir(data_dir: Path) -> Listing:
    """The registry of a data dir whose node is not running (no pending meters)."""
    path = data_dir / "registry.db"
    initialised(data_dir)
    if not path.is_file():
        return Listing([], [], 0, f"{path} (not made yet: the node never ran)")
    db = read_only(path)
    try:
        reg = RegistryView(db)
        found, quarantined = reg.devices(), reg.quarantine_size()
    except sqlite3.Error as e:
        raise FogError(f"cannot read {path}: {e}") from None
    finally:
        db.close()
    devices = [d.as_json() for d in found]
    return Listing(devices, [], quarantined,
                   f"{path} (no node running: pending meters are seen by a running node only)")


def listing(url: str, data_dir: Path, token: str | None = None) -> Listing:
    """From the running node if it answers, else from the data dir."""
    try:
        return from_api(url, data_dir, token)
    except ChainUnavailable:
        return from_data_dir(data_dir)
    except ChainClientError as e:
        raise FogError(f"the fog at {url} refused the device list: {e}") from None


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "-"


def table(ls: Listing) -> str:
    """The listing as a fixed-width table."""
    rows = [("meter", "status", "last seq", "last reading", "gaps", "since", "reason")]
    for d in ls.devices:
        rows.append((d["dev"], d["status"], str(d["last_seq"]), _when(int(d["last_t"])),
                     str(d["gaps"]), _when(int(d["since"])), d["reason"] or "-"))
    for p in ls.pending:
        rows.append((p["dev"], "pending", "-", "-", "-", "-", "birth seen, not enrolled"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows]
    counts = {s: sum(1 for d in ls.devices if d["status"] == s) for s in ("active", "revoked")}
    lines.append(f"{counts['active']} enrolled, {counts['revoked']} revoked, "
                 f"{len(ls.pending)} pending, {ls.quarantined} quarantined message(s); "
                 f"from {ls.source}")
    return "\n".join(lines)
