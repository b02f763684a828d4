"""tools.bench_consortium's load: the simulated fog nodes and the anchors they submit.

Fog: a fog's real RFC 9162 log (1,000 entries an interval), its signed checkpoints and type-11
aggregates, and each interval close's anchor built by the fog's own `build_anchor`. Client and
commit: one fog's kept-alive HTTP connection and the outbox's submit-until-committed. Backend:
what a backend (tools.bench_consortium's embedded or consortium) gives the load. run: one
measured run of N fogs submitting concurrently (anchors pre-signed except fog 0's, which closes
its intervals live), with the CPU its processes used (Linux /proc); measure: the runs of one
backend. Result and q: what a run measured and its quantiles, for tools.bench_consortium_report.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fog_node.chainlink.link import build_anchor
from fog_node.log.checkpoints import Checkpoint, Checkpoints
from fog_node.log.store import MemoryLogStore
from meterledger import wire as P
from meterledger.wire import chain as C

IVL = 900
ENTRIES = 1_000  # log entries per interval: a fog of 1,000 meters (their content is filler)


class BenchError(RuntimeError):
    pass


# --- a simulated fog node ----------------------------------------------------------------------
class Fog:
    """A fog's log and signed checkpoints; each interval: readings arrive (two seals), then
    the close signs the feeder's aggregate and a checkpoint naming it, and the anchor."""

    def __init__(self, chain: bytes, ivl0: int) -> None:
        self.key = P.SigningKey.generate()
        self.chain = chain
        self.log = MemoryLogStore()
        self.cps = Checkpoints(":memory:", self.key, self.log)
        self.head: Checkpoint | None = None  # the last anchored checkpoint
        self.aggs: dict[int, bytes] = {}  # log index -> aggregate
        self.nonce = 0
        self.ivl = ivl0

    def arrive(self) -> None:
        """The interval's readings arrive: half, a seal, the rest, a seal."""
        end = self.ivl + IVL
        size = self.log.size()
        entries = [b"reading %d of fog %s" % (i, self.key.id_hex.encode())
                   for i in range(size, size + ENTRIES)]
        for part, t in ((entries[:ENTRIES // 2], end + 5), (entries[ENTRIES // 2:], end + 10)):
            self.log.append_batch(part)
            self.cps.seal(t)

    def close(self) -> bytes:
        """Close the interval: the aggregate, the checkpoint naming it, the anchor."""
        end = self.ivl + IVL
        agg = P.sign1(self.key, {
            0: P.AGGREGATE, 1: "feeder-001", 2: end, 3: IVL, 4: 123_456, 5: 0,
            6: ENTRIES, 7: ENTRIES, 8: 0, 9: 0, 13: [], 14: self.log.size(), 15: P.ZERO32,
            16: 0, 17: self.key.id, 19: P.digest(b"members")})
        self.aggs[self.log.append_batch([agg])] = agg
        latest = self.cps.seal(end + 60, ivl=end, agg=P.digest(agg), force=True)
        assert latest is not None
        first = self.head.height + 1 if self.head else 1
        cps = [c for h in range(first, latest.height + 1) if (c := self.cps.at_height(h))]
        self.nonce += 1
        raw, n = build_anchor(self.key, self.chain, self.nonce, self.head, cps, self.log,
                              end + 60, lambda lo, hi: [a for i, a in self.aggs.items()
                                                        if lo <= i < hi])
        if n != len(cps):
            raise BenchError("an interval's anchor does not fit one transaction")
        self.head = latest
        self.ivl = end
        return raw

    def interval(self) -> bytes:
        self.arrive()
        return self.close()

    def close_store(self) -> None:
        self.cps.close()
        self.log.close()


# --- HTTP ----------------------------------------------------------------------------------------
class Client:
    """One fog's kept-alive connection to an API."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None
                ) -> tuple[int, dict[str, Any]]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        try:
            self.conn.request(method, path, body,
                              {"Content-Type": "application/cbor"} if body else {})
            r = self.conn.getresponse()
            status, text = r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        try:
            doc = json.loads(text)
        except ValueError:
            doc = {"error": text[:200].decode(errors="replace")}
        return status, doc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Stopped(Exception):
    pass


def commit(client: Client, raw: bytes, stop: threading.Event) -> tuple[int, int]:
    """Submit until committed, as the outbox does: the same bytes again after a 503 or a
    lost connection (a landed one is answered 409 duplicate). (height or -1, retries)."""
    retries = 0
    while True:
        if stop.is_set():
            raise Stopped
        try:
            status, doc = client.request("POST", "/v1/tx", raw)
        except (OSError, http.client.HTTPException):
            status, doc = 0, {}
        if status == 200:
            return int(doc["height"]), retries
        if status == 409 and doc.get("error") == "duplicate":
            return -1, retries
        if status not in (0, 503):
            raise BenchError(f"the chain refused an anchor: {status} {doc}")
        retries += 1
        time.sleep(0.05)


# --- a backend, as the load sees it ------------------------------------------------------------
@dataclass
class Backend:
    """A running backend (tools.bench_consortium's embedded or consortium): where to submit,
    how to register fogs and read a bundle's anchor section, and its processes."""

    name: str
    urls: list[str]  # fog i submits to urls[i % len(urls)]
    key: P.SigningKey  # the dispatch key
    register: Callable[[list[bytes]], None]  # register transactions, in nonce order
    section: Callable[[dict[str, Any]], dict[str, Any]]  # GET /v1/tx -> bundle's anchor
    pids: dict[str, list[int]]  # the backend's processes by role, for their CPU time
    nonce: int = 1  # the dispatch key's last nonce (genesis: 1)

    @property
    def chain(self) -> bytes:
        return self.key.id


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far (Linux /proc; nan elsewhere)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def cpu_now(b: Backend) -> dict[str, float]:
    t = os.times()
    return {**{role: cpu_s(pids) for role, pids in b.pids.items()},
            "client": t.user + t.system}


# --- one measured run --------------------------------------------------------------------------
@dataclass
class Result:
    fogs: int
    anchors: int = 0
    wall_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)  # submit -> 200, every anchor
    close_ms: list[float] = field(default_factory=list)  # fog 0: close -> committed
    retries: int = 0
    blocks: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by role, this run
    section_bytes: list[int] = field(default_factory=list)  # bundle anchor section, JSON
    proof_bytes: list[int] = field(default_factory=list)  # the same without the transaction

    @property
    def tps(self) -> float:
        return self.anchors / self.wall_s if self.wall_s else 0.0


def q(xs: list[float] | list[int], p: float) -> float:
    """The p-quantile by nearest rank (p=0.5: the median)."""
    if not xs:
        return math.nan
    if p == 0.5:
        return float(statistics.median(xs))
    s = sorted(xs)
    return float(s[max(0, math.ceil(p * len(s)) - 1)])


# long: one measured run: fogs registered, anchors pre-signed, the fogs' threads, samples
def run(b: Backend, fogs: int, per_fog: int, stop: threading.Event) -> Result:
    ivl0 = int(time.time()) // IVL * IVL
    sims = [Fog(b.chain, ivl0) for _ in range(fogs)]
    regs = []
    for f in sims:
        b.nonce += 1
        regs.append(P.sign1(b.key, C.tx(b.key.id, b.nonce, C.REGISTER, C.register_body(
            "fog", f.key.public_key.raw, f"bench-{f.key.id_hex}"), int(time.time()), b.key.id)))
    b.register(regs)
    signed = [[] if i == 0 else [f.interval() for _ in range(per_fog)]
              for i, f in enumerate(sims)]
    res = Result(fogs)
    lock = threading.Lock()
    errors: list[BaseException] = []
    times: list[tuple[float, float]] = []
    heights: set[int] = set()
    digests: list[bytes] = []
    go = threading.Barrier(fogs + 1)

    def worker(i: int) -> None:
        client = Client(b.urls[i % len(b.urls)])
        f = sims[i]
        try:
            go.wait()
            for k in range(per_fog):
                closed = 0.0
                if i == 0:  # the live fog: readings arrive (not timed), then the close
                    f.arrive()
                    closed = time.perf_counter()
                    raw = f.close()
                else:
                    raw = signed[i][k]
                t0 = time.perf_counter()
                height, retries = commit(client, raw, stop)
                t1 = time.perf_counter()
                with lock:
                    times.append((t0, t1))
                    res.latency_ms.append((t1 - t0) * 1000)
                    res.retries += retries
                    if height >= 0:
                        heights.add(height)
                    if i == 0:
                        res.close_ms.append((t1 - closed) * 1000)
                    if k == per_fog - 1:
                        digests.append(P.digest(raw))
        except Stopped:
            pass
        except BaseException as e:  # reported by the main thread
            with lock:
                errors.append(e)
            stop.set()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True,
                                name=f"fog-{i}") for i in range(fogs)]
    for t in threads:
        t.start()
    cpu0 = cpu_now(b)
    go.wait()
    for t in threads:
        while t.is_alive():
            t.join(0.5)  # wakes for Ctrl-C
    for f in sims:
        f.close_store()
    if errors:
        raise errors[0]
    cpu1 = cpu_now(b)
    res.cpu = {role: cpu1[role] - cpu0[role] for role in cpu0}
    res.anchors = len(times)
    res.wall_s = max(t1 for _, t1 in times) - min(t0 for t0, _ in times)
    res.blocks = len(heights)
    for d in digests[:20]:
        tx = _tx(b, d)
        section = b.section(tx)
        res.section_bytes.append(len(json.dumps(section)))
        res.proof_bytes.append(len(json.dumps({k: v for k, v in section.items()
                                               if k != "transaction"})))
    return res


def _tx(b: Backend, digest: bytes) -> dict[str, Any]:
    """GET /v1/tx/DIGEST, with its finality on a consortium (CometBFT indexes it after the
    commit the app saw)."""
    c = Client(b.urls[0])
    try:
        for _ in range(100):
            status, doc = c.request("GET", f"/v1/tx/{digest.hex()}")
            if status == 200 and (b.name == "embedded" or "finality" in doc):
                return doc
            time.sleep(0.1)
    finally:
        c.close()
    raise BenchError(f"GET /v1/tx/{digest.hex()} on {b.name}: no answer with its proof")


def measure(b: Backend, sizes: list[int], per_fog: int, closes: int,
            stop: threading.Event) -> dict[str, Result]:
    out: dict[str, Result] = {}
    r = run(b, 1, closes, stop)
    out["alone"] = r
    print(f"  {b.name}: 1 fog alone, {r.anchors} closes: {r.tps:.1f} tx/s, "
          f"close to committed median {q(r.close_ms, 0.5):.0f} ms", flush=True)
    for n in sizes:
        r = run(b, n, per_fog, stop)
        out[str(n)] = r
        print(f"  {b.name}: {n} fogs, {r.anchors} anchors in {r.wall_s:.1f} s: "
              f"{r.tps:.1f} tx/s, latency median {q(r.latency_ms, 0.5):.0f} ms, "
              f"p95 {q(r.latency_ms, 0.95):.0f} ms, {r.blocks} blocks, {r.retries} resent",
              flush=True)
    return out
