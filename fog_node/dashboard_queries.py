"""The queries behind the dashboard's endpoints (fog_node.dashboard): each a few keyed SQLite
queries over one request's `Snapshot` (fog_node.reads), never the ingest thread's lock, and
every list bounded by the caller's `limit`.

What they read: the registry (devices, the births table, the rejection record of
fog_node.rejections, alerts), the cooked index (aggregates by interval, a meter's readings
by time, estimates, VEE findings, the fault history: fog_node.cooking.index), the
checkpoints and the chain link's outbox (anchors by checkpoint height). The answers are the
JSON documents docs/PROTOCOL.md section 12 describes; bytes are lowercase hex.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

from fog_node import rejections as RJ
from fog_node.cooking import vee
from fog_node.reads import Snapshot
from fog_node.registry import Birth
from meterledger import wire as P

_CHUNK = 500  # values per IN (...): under SQLite's bound on a statement's parameters
_NO_DEV = b""  # sorts before every meter id: "from the first"


def _in(db: sqlite3.Connection, sql: str, keys: Sequence[bytes]) -> list[Any]:
    """Rows of `sql` (with one `{}` for the IN list) for `keys`, in chunks: each a lookup of
    the keys, never a scan."""
    out: list[Any] = []
    for i in range(0, len(keys), _CHUNK):
        part = keys[i:i + _CHUNK]
        out += db.execute(sql.format(", ".join("?" * len(part))), part).fetchall()
    return out


def _meta(db: sqlite3.Connection, keys: Iterable[str]) -> dict[str, int]:
    ks = list(keys)
    rows = db.execute(f"SELECT k, v FROM meta WHERE k IN ({', '.join('?' * len(ks))})",
                      ks).fetchall()
    found = {k: int(v) for k, v in rows}
    return {k: found.get(k, 0) for k in ks}


# -- meters ---------------------------------------------------------------------------------
_METERS = ("SELECT d.dev, d.pub, d.status, d.reason, d.since, d.last_seq, d.last_t, d.gaps, "
           "b.dev, b.received, b.fw, b.boot, b.last_seq, b.backlog, b.hw, b.src, b.dur, "
           "COALESCE(r.n, 0) FROM devices d LEFT JOIN births b ON b.dev = d.dev "
           "LEFT JOIN rejection_meters r ON r.dev = d.dev WHERE d.dev > ?{} "
           "ORDER BY d.dev LIMIT ?")


def _meter(dev: bytes, pub: bytes, state: str, reason: str, since: int | None, last_seq: int,
           last_t: int, gaps: int, birth: Birth | None, rejected: int) -> dict[str, Any]:
    seen = max(last_t, birth.received if birth else 0)
    return {"dev": dev.hex(), "pub": pub.hex(), "state": state, "reason": reason,
            "since": since, "last_seq": last_seq, "last_t": last_t, "gaps": gaps,
            "last_seen": seen or None, "birth": birth.as_json() if birth else None,
            "rejected": rejected}


# long: enrolled and pending meters merged in one id order, with their totals
def meters(s: Snapshot, pending: Mapping[bytes, bytes], seen: Mapping[bytes, Birth],
           after: bytes | None, limit: int, state: str | None) -> dict[str, Any]:
    """GET /v1/meters: enrolled and revoked meters (one query joining their births and
    rejection counts) and pending ones (births seen, not enrolled: `pending`, with what
    `seen` holds of them), in id order after `after`, at most `limit`."""
    db = s.registry.db
    start = after if after is not None else _NO_DEV
    rows: list[Any] = []
    if state != "pending":
        where = " AND d.status = ?" if state is not None else ""
        args: tuple[Any, ...] = (start, state, limit + 1) if state else (start, limit + 1)
        rows = db.execute(_METERS.format(where), args).fetchall()
    candidates = sorted(pending)
    known = {r[0] for r in _in(db, "SELECT dev FROM devices WHERE dev IN ({})", candidates)}
    waiting = [d for d in candidates if d not in known]
    out: list[tuple[bytes, dict[str, Any]]] = []
    for r in rows:
        birth = Birth(*r[8:17]) if r[8] is not None else None
        out.append((r[0], _meter(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], birth,
                                 r[17])))
    if state in (None, "pending"):
        page = [d for d in waiting if d > start][:limit + 1]
        counts = dict(_in(db, "SELECT dev, n FROM rejection_meters WHERE dev IN ({})", page))
        for dev in page:
            out.append((dev, _meter(dev, pending[dev], "pending", "", None, 0, 0, 0,
                                    seen.get(dev), int(counts.get(dev, 0)))))
    out.sort(key=lambda x: x[0])
    more = len(out) > limit
    out = out[:limit]
    totals = dict.fromkeys(("active", "revoked"), 0)
    totals.update({st: int(n) for st, n in db.execute(
        "SELECT status, COUNT(*) FROM devices GROUP BY status")})
    totals["pending"] = len(waiting)
    totals["all"] = sum(totals.values())
    return {"meters": [m for _, m in out], "totals": totals,
            "quarantined": s.registry.quarantine_size(),
            "next_after": out[-1][0].hex() if more and out else None}


# -- rejections -----------------------------------------------------------------------------
def rejections(s: Snapshot, intervals: int, now: int) -> dict[str, Any]:
    """GET /v1/rejections: counts by reason with the last example of each, and the counts
    of the last `intervals` bins (RJ.INTERVAL_S) up to the one holding `now`."""
    db = s.registry.db
    reasons = []
    for reason, n, first_t, last_t, dev, detail, raw in db.execute(
            "SELECT reason, n, first_t, last_t, last_dev, last_detail, last_raw "
            "FROM rejection_reasons ORDER BY n DESC, reason"):
        reasons.append({"reason": reason, "count": n, "first_t": first_t,
                        "last": {"t": last_t, "dev": dev.hex() if dev else None,
                                 "detail": detail, "raw": raw.hex() if raw else None},
                        "hint": RJ.hint(reason)})
    width = RJ.INTERVAL_S
    last = now // width * width
    first = last - (intervals - 1) * width
    counts = dict(db.execute("SELECT start, n FROM rejection_series WHERE start >= ? AND "
                             "start <= ?", (first, last)).fetchall())
    dropped = _meta(db, RJ.DROPPED.values())
    return {"total": sum(r["count"] for r in reasons),
            "since": min((r["first_t"] for r in reasons), default=None),
            "reasons": reasons,
            "series": {"interval_s": width, "start": first,
                       "counts": [int(counts.get(t, 0)) for t in range(first, last + 1, width)]},
            "dropped": {what: dropped[k] for what, k in RJ.DROPPED.items()}}


# -- feeders --------------------------------------------------------------------------------
def _window(db: sqlite3.Connection, feeder: str | None, after: int | None, limit: int,
            ) -> tuple[list[int], bool]:
    """The interval ends of the page (ascending) and whether more follow after it."""
    mine = ("feeder = ? AND ", (feeder,)) if feeder is not None else ("", ())
    if after is None:  # the newest `limit`
        ivls = [r[0] for r in db.execute(f"SELECT DISTINCT ivl FROM aggregates WHERE "
                                         f"{mine[0]}1 ORDER BY ivl DESC LIMIT ?",
                                         (*mine[1], limit))]
        return ivls[::-1], False
    ivls = [r[0] for r in db.execute(f"SELECT DISTINCT ivl FROM aggregates WHERE {mine[0]}"
                                     "ivl > ? ORDER BY ivl LIMIT ?",
                                     (*mine[1], after, limit + 1))]
    return ivls[:limit], len(ivls) > limit


def _point(f: P.Fields, rev: int) -> dict[str, Any]:
    return {"ivl": f[2], "start": f[2] - f[3], "imp": f[4], "exp": f[5], "loss": f.get(10),
            "meters": f[6], "measured": f[7], "estimated": f[8], "estimated_wh": f[9],
            "includes_estimates": f[8] > 0, "v_min": f.get(11), "v_max": f.get(12),
            "alerts": list(f.get(13, [])), "rev": rev}


def feeders(s: Snapshot, feeder: str | None, after: int | None, limit: int,
            ) -> dict[str, Any]:
    """GET /v1/feeders: each feeder's (or one's) latest aggregate (type 11) of each interval
    of the page, from the cooked index's aggregates by interval end."""
    db = s.cooked
    ivls, more = _window(db, feeder, after, limit)
    latest: dict[tuple[str, int], tuple[int, bytes]] = {}
    mine = ("feeder = ? AND ", (feeder,)) if feeder is not None else ("", ())
    if ivls:
        for name, ivl, rev, msg in db.execute(
                f"SELECT feeder, ivl, rev, msg FROM aggregates WHERE {mine[0]}ivl >= ? AND "
                "ivl <= ?", (*mine[1], ivls[0], ivls[-1])):
            have = latest.get((name, ivl))
            if have is None or rev > have[0]:
                latest[(name, ivl)] = (rev, msg)
    return _by_feeder(latest, ivls[-1] if more else None)


def _by_feeder(latest: dict[tuple[str, int], tuple[int, bytes]], next_after: int | None,
               ) -> dict[str, Any]:
    by_feeder: dict[str, dict[str, Any]] = {}
    for (name, _), (rev, msg) in sorted(latest.items()):
        f = P.parse(msg, schema=False).fields
        doc = by_feeder.setdefault(name, {"feeder": name, "points": []})
        doc["points"].append(_point(f, rev))
        if 20 in f:
            doc["merged"] = list(f[20])
    return {"feeders": list(by_feeder.values()), "next_after": next_after}


# -- alerts and faults ----------------------------------------------------------------------
def alerts(s: Snapshot, limit: int, before: int | None, faults_before: int | None,
           ) -> dict[str, Any]:
    """GET /v1/alerts: the local faults' history (cooked index) and the registry's alerts,
    each newest first."""
    top = 2**63 - 1
    faults = []
    for (id_, kind, feeder, first_ivl, last_ivl, dur, raised, ended, detail,
         n) in s.cooked.execute(
            "SELECT id, kind, feeder, first_ivl, last_ivl, dur, raised, ended, detail, meters "
            "FROM faults WHERE id < ? ORDER BY id DESC LIMIT ?",
            (faults_before if faults_before is not None else top, limit + 1)):
        faults.append({"id": id_, "kind": kind, "feeder": feeder, "start": first_ivl - dur,
                       "end": last_ivl if ended is not None else None,
                       "first_ivl": first_ivl, "last_ivl": last_ivl,
                       "open": ended is None, "raised": raised, "ended": ended,
                       "meters": n, "detail": detail})
    rows = s.registry.db.execute(
        "SELECT id, t, kind, dev, detail FROM alerts WHERE id < ? ORDER BY id DESC LIMIT ?",
        (before if before is not None else top, limit + 1)).fetchall()
    found = [{"id": r[0], "t": r[1], "kind": r[2], "dev": r[3].hex() if r[3] else None,
              "detail": r[4]} for r in rows]
    (open_,) = s.cooked.execute("SELECT COUNT(*) FROM open_faults").fetchone()
    return {"faults": faults[:limit], "alerts": found[:limit], "open_faults": open_,
            "faults_dropped": _meta(s.cooked, ["faults_dropped"])["faults_dropped"],
            "next_before": found[limit - 1]["id"] if len(found) > limit else None,
            "next_faults_before": faults[limit - 1]["id"] if len(faults) > limit else None}


# -- VEE ------------------------------------------------------------------------------------
def _estimate(row: Sequence[Any]) -> dict[str, Any]:
    digest, dev, from_seq, to_seq, start, last_end, method, ivls, leaf, superseded = row
    known = method != vee.METHOD_NONE
    items, s = [], start
    for item in json.loads(ivls):
        items.append({"ivl": item[0], "start": s, "imp": item[1] if known else None,
                      "exp": item[2] if known else None})
        s = item[0]
    return {"digest": digest.hex(), "dev": dev.hex(), "from_seq": from_seq, "to_seq": to_seq,
            "start": start, "end": last_end, "method": method,
            "imp": sum(i["imp"] for i in items) if known else None,
            "exp": sum(i["exp"] for i in items) if known else None,
            "intervals": items, "leaf": leaf, "superseded_by": superseded or None}


def vee_page(s: Snapshot, dev: bytes | None, limit: int, before: int | None,
             estimates_before: int | None) -> dict[str, Any]:
    """GET /v1/vee: VEE findings (every rule's, the newest first) and the estimates
    (type 10, the newest logged first), of one meter or all."""
    db, top = s.cooked, 2**63 - 1
    mine = " AND dev = ?" if dev is not None else ""
    one: tuple[bytes, ...] = (dev,) if dev is not None else ()
    rows = db.execute(f"SELECT id, dev, seq, t, rule, severity, detail, leaf FROM vee_findings "
                      f"WHERE id < ?{mine} ORDER BY id DESC LIMIT ?",
                      (before if before is not None else top, *one, limit + 1)).fetchall()
    findings = [{"id": r[0], "dev": r[1].hex(), "seq": r[2], "t": r[3], "rule": r[4],
                 "severity": r[5], "detail": r[6], "leaf": r[7]} for r in rows]
    ests = db.execute("SELECT digest, dev, from_seq, to_seq, start, last_end, method, ivls, "
                      f"leaf, superseded FROM estimates WHERE leaf < ?{mine} ORDER BY leaf "
                      "DESC LIMIT ?", (estimates_before if estimates_before is not None
                                       else top, *one, limit + 1)).fetchall()
    estimates = [_estimate(r) for r in ests]
    return {"findings": findings[:limit], "estimates": estimates[:limit],
            "findings_dropped": _meta(db, ["vee_findings_dropped"])["vee_findings_dropped"],
            "next_before": findings[limit - 1]["id"] if len(findings) > limit else None,
            "next_estimates_before": (estimates[limit - 1]["leaf"] if len(estimates) > limit
                                      else None)}


# -- one meter's curve ----------------------------------------------------------------------
def _fields(r: Sequence[Any]) -> P.Fields:
    seq, t, dur, imp, exp, flags, _ = r
    return {0: P.READING, 2: seq, 3: t, 4: dur, 5: imp, 6: exp, 7: flags}


_CURVE = "SELECT seq, t, dur, imp, exp, flags, bound FROM readings WHERE dev = ? AND "


# long: the measured pairs and the live estimates of one window, merged and cut to the page
def curve(s: Snapshot, dev: bytes, after: int | None, limit: int) -> dict[str, Any]:
    """GET /v1/curve: one meter's energy per interval: measured where two consecutive
    readings bound it (as the aggregates count it), else from a live estimate (marked
    estimated, with its method; energies null for method "none"); missing intervals are
    absent. Newest `limit` intervals, or the first `limit` ending after `after`."""
    db = s.cooked
    floor: int | None = None  # points ending at or before it may lack their earlier reading
    cap: int | None = None  # points ending after it may lack their later reading
    if after is None:
        rows = db.execute(_CURVE + "1 ORDER BY t DESC, seq DESC LIMIT ?",
                          (dev, limit + 2)).fetchall()
        if len(rows) == limit + 2:
            floor = rows[-1][1]
    else:
        rows = db.execute(_CURVE + "t <= ? ORDER BY t DESC, seq DESC LIMIT 1",
                          (dev, after)).fetchall()
        rest = db.execute(_CURVE + "t > ? ORDER BY t, seq LIMIT ?",
                          (dev, after, limit + 1)).fetchall()
        rows += rest
        floor = after
        if len(rest) == limit + 1:
            cap = rest[-1][1]
    rows.sort(key=lambda r: r[0])
    points: dict[int, dict[str, Any]] = {}
    for a, b in pairwise(rows):
        if b[0] != a[0] + 1 or not (a[6] and b[6]) or b[1] <= a[1]:
            continue
        fa, fb = _fields(a), _fields(b)
        energy = vee.interval_energy(fa, fb)
        if energy is not None and vee.gap_ends(fa, fb) == [b[1]]:
            points[b[1]] = {"ivl": b[1], "start": a[1], "imp": energy[0], "exp": energy[1],
                            "estimated": False, "method": "measured", "seq": b[0]}
    low = floor if floor is not None else -1
    high = cap if cap is not None else 2**63 - 1
    for start, method, ivls, leaf in db.execute(
            "SELECT start, method, ivls, leaf FROM estimates WHERE dev = ? AND superseded = 0 "
            "AND last_end > ? AND start < ?", (dev, low, high)):
        known = method != vee.METHOD_NONE
        for item in json.loads(ivls):
            if item[0] not in points:
                points[item[0]] = {"ivl": item[0], "start": start,
                                   "imp": item[1] if known else None,
                                   "exp": item[2] if known else None,
                                   "estimated": True, "method": method, "leaf": leaf}
            start = item[0]
    ordered = [p for ivl, p in sorted(points.items())
               if ivl > low and (cap is None or ivl <= cap)]
    if after is None:
        page, more = ordered[-limit:], False
    else:
        page, more = ordered[:limit], len(ordered) > limit or cap is not None
    return {"dev": dev.hex(), "points": page,
            "next_after": page[-1]["ivl"] if more and page else None}


# -- checkpoints and anchors -----------------------------------------------------------------
_ANCHOR = ("SELECT nonce, digest, first, last, created, state, height, idx, reason{} "
           "FROM outbox WHERE kind = 'anchor' AND ")


def _anchors(db: sqlite3.Connection | None, lo: int, hi: int,
             ) -> tuple[list[dict[str, Any]], int | None]:
    """The anchors carrying checkpoints lo..hi (outbox rows by their last height: those
    ending in the range and the first ending after it), and the height the chain has
    confirmed; ([], None) when the node does not anchor."""
    if db is None:
        return [], None
    cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
    if not cols:
        return [], None
    sql = _ANCHOR.format(", landed" if "landed" in cols else ", NULL")
    rows = db.execute(sql + "last >= ? AND last <= ?", (lo, hi)).fetchall()
    rows += db.execute(sql + "last > ? ORDER BY last LIMIT 1", (hi,)).fetchall()
    out = [{"nonce": r[0], "digest": r[1].hex(), "first": r[2], "last": r[3],
            "created": r[4], "state": r[5], "block_height": r[6], "tx_index": r[7],
            "reason": r[8], "landed": r[9]} for r in rows]
    (top,) = db.execute("SELECT MAX(last) FROM outbox WHERE kind = 'anchor' AND "
                        "state = 'landed'").fetchone()
    base = db.execute("SELECT v FROM meta WHERE k = 'base_height'").fetchone()
    return out, max(int(top or 0), int(base[0]) if base and base[0] is not None else 0)


def checkpoints(s: Snapshot, before: int | None, limit: int) -> dict[str, Any]:
    """GET /v1/checkpoints: the side-chain newest first, each with the anchor that carried
    it to the dispatch chain (the chain link's outbox), if any."""
    rows = s.checkpoints.db.execute(
        "SELECT height, size, root, t, msg FROM checkpoints WHERE height < ? ORDER BY height "
        "DESC LIMIT ?", (before if before is not None else 2**63 - 1, limit + 1)).fetchall()
    page = rows[:limit]
    found, anchored = _anchors(s.chain, page[-1][0], page[0][0]) if page else ([], None)
    if not page and s.chain is not None:
        anchored = _anchors(s.chain, 0, 0)[1]
    out = []
    for height, size, root, t, msg in page:
        a = next((a for a in found if a["first"] is not None
                  and a["first"] <= height <= a["last"]), None)
        out.append({"height": height, "size": size, "t": t, "root": root.hex(),
                    "ivl": P.parse(msg, schema=False).fields.get(7), "anchor": a})
    latest = s.checkpoints.latest()
    return {"checkpoints": out, "latest": latest.height if latest else 0,
            "anchored_height": anchored,
            "next_before": page[-1][0] if len(rows) > limit else None}
