"""The fog's HTTP API over a real node (SQLite files in tmp_path) and a real server on a
free loopback port, with urllib as the client. Requests carry the data dir's auditor token
unless a test says otherwise (the tiers themselves: tests/meterledger/test_http_tiers.py).

Proofs from the API are checked with the independent slow reference (tests/merkle_reference)
against the roots inside the fog's signed checkpoints, with the fog's public key from its
data dir, so nothing here trusts the code under test to check itself.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fog_node import reads
from fog_node.api import FogAPI
from fog_node.config import FogConfig
from fog_node.enrollment import REQUESTS, apply_queued
from fog_node.metrics import parse_metrics, render
from fog_node.node import FogError, FogNode, init_data_dir
from meterledger import wire as P
from meterledger.clients.chain import ChainClientError
from meterledger.clients.fog import FogClient
from meterledger.infra.metrics import escape_label
from tests import merkle_reference as R

T0 = 1_800_000_000  # on the 900 s grid
METER = P.SigningKey.from_int(0xA11CE)
STRANGER = P.SigningKey.from_int(0x57A6E)  # never enrolled at first
SPOOF = P.SigningKey.from_int(0xBAD)


class Clock:
    def __init__(self) -> None:
        self.t = T0 + 86_400.0  # a day after the first reading's interval

    def __call__(self) -> float:
        return self.t


def reading(key: P.SigningKey, seq: int, prev: bytes, t: int, imp: int = 100) -> bytes:
    return P.sign1(key, P.reading(key.id, seq, t, 900, imp + seq, 0, 0, prev))


def chain(key: P.SigningKey, n: int) -> list[bytes]:
    out, prev = [], bytes(32)
    for seq in range(1, n + 1):
        m = reading(key, seq, prev, T0 + 900 * (seq - 1))
        out.append(m)
        prev = P.digest(m)
    return out


def birth(key: P.SigningKey, fog_id: bytes) -> bytes:
    return P.sign1(key, {0: P.BIRTH, 1: key.id, 10: key.public_key.raw, 11: "0.1.0", 12: 1,
                         13: 0, 14: "esp32", 15: "sim", 4: 900, 16: fog_id})


def make_node(data_dir: Path, clock: Clock) -> FogNode:
    init_data_dir(data_dir)
    return FogNode(FogConfig(data_dir=data_dir), clock=clock)


def tokens(node: FogNode) -> tuple[str, str]:
    """(auditor, operator) tokens, read from the node's data dir."""
    d = node.config.data_dir
    return ((d / "auditor.token").read_text().strip(),
            (d / "operator.token").read_text().strip())


@dataclass
class Fog:
    node: FogNode
    api: FogAPI
    clock: Clock
    url: str
    readings: list[bytes]
    fog_pub: P.PublicKey  # read from the data dir, not from the API

    @property
    def auditor(self) -> str:
        return tokens(self.node)[0]

    @property
    def operator(self) -> str:
        return tokens(self.node)[1]


@pytest.fixture
def fog(tmp_path: Path) -> Any:
    """Enrollment at entry 0, readings 1..7 at entries 1..7; checkpoints of sizes 4 and 7,
    so the last reading is logged but not covered."""
    clock = Clock()
    node = make_node(tmp_path / "fog", clock)
    node.ingest.decide(METER.public_key.raw, "active", "test")
    msgs = chain(METER, 7)
    node.ingest.process(msgs[:3])
    assert node.checkpoints.seal(int(clock())) is not None
    clock.t += 60
    node.ingest.process(msgs[3:6])
    assert node.checkpoints.seal(int(clock())) is not None
    clock.t += 60
    node.ingest.process(msgs[6:])
    assert node.log.size() == 8
    api = FogAPI(node)
    port = api.start("127.0.0.1", 0)
    pub = P.PublicKey(bytes.fromhex((tmp_path / "fog" / "fog.pub").read_text().strip()))
    yield Fog(node, api, clock, f"http://127.0.0.1:{port}", msgs, pub)
    api.stop()
    node.close()


def fetch(url: str, method: str = "GET", token: str | None = None,
          body: bytes | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, method=method, data=body)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read()


def get(fog: Fog, path: str) -> tuple[int, Any]:
    status, ctype, body = fetch(fog.url + path, token=fog.auditor)
    assert ctype == "application/json", (path, ctype, body)
    return status, json.loads(body)


def ok(fog: Fog, path: str) -> Any:
    status, body = get(fog, path)
    assert status == 200, (path, body)
    return body


def error(fog: Fog, path: str, status: int) -> str:
    got, body = get(fog, path)
    assert got == status, (path, body)
    assert list(body) == ["error"]
    text: str = body["error"]
    return text


def signed_checkpoint(fog: Fog, hex_msg: str) -> dict[int, Any]:
    """The payload of a checkpoint message after checking the fog's signature on it."""
    fields: dict[int, Any] = P.verify(bytes.fromhex(hex_msg), fog.fog_pub).fields
    assert fields[0] == P.CHECKPOINT and fields[17] == fog.fog_pub.id
    return fields


def raw_request(fog: Fog, data: bytes) -> bytes:
    port = int(fog.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # the client sends nothing more
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def raw_answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """(status, headers with lowercase names, JSON body) of one raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), raw[:200]
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
    return int(status_line.split(" ")[1]), headers, json.loads(body)


DEV = METER.id.hex()


# -- /v1/checkpoint ---------------------------------------------------------------------------
def test_checkpoint_is_the_latest_signed_one(fog):
    body = ok(fog, "/v1/checkpoint")
    f = signed_checkpoint(fog, body["checkpoint"])
    assert (f[2], f[3], f[4].hex(), f[6]) == (body["height"], body["size"], body["root"],
                                             body["t"])
    assert (body["height"], body["size"]) == (2, 7)
    assert body["fog_pub"] == fog.fog_pub.raw.hex() and body["fog_id"] == fog.fog_pub.id.hex()
    entries = [bytes.fromhex(ok(fog, f"/v1/entries/{i}")["entry"]) for i in range(7)]
    assert body["root"] == R.mth(entries).hex()


def test_nothing_sealed_yet_is_a_clear_404(tmp_path):
    clock = Clock()
    node = make_node(tmp_path / "fog", clock)
    node.ingest.decide(METER.public_key.raw, "active", "test")
    node.ingest.process(chain(METER, 1))
    api = FogAPI(node)
    f = Fog(node, api, clock, f"http://127.0.0.1:{api.start()}", [], node.key.public_key)
    try:
        assert error(f, "/v1/checkpoint", 404) == "no checkpoint has been sealed yet"
        assert error(f, f"/v1/proof/inclusion?dev={DEV}&seq=1", 404) == (
            "no checkpoint has been sealed yet")
        assert error(f, "/v1/proof/consistency?first=0&second=2", 400) == (
            "first 0 is not the size of a sealed checkpoint (none has been sealed yet)")
        assert ok(f, "/healthz") == {"ok": True, "log_size": 2, "checkpoint_height": 0}
        m = parse_metrics(fetch(f.url + "/metrics", token=f.auditor)[2].decode())
        assert m["meterledger_fog_checkpoint_height"] == 0
        assert m["meterledger_fog_checkpoint_lag_entries"] == 2
        assert "meterledger_fog_checkpoint_lag_seconds" not in m  # no lag since "never"
    finally:
        api.stop()
        node.close()


# -- /v1/proof/inclusion ----------------------------------------------------------------------
def test_inclusion_proofs_verify_against_the_signed_checkpoint(fog):
    for seq in range(1, 7):
        body = ok(fog, f"/v1/proof/inclusion?dev={DEV}&seq={seq}")
        f = signed_checkpoint(fog, body["checkpoint"])
        entry = bytes.fromhex(body["entry"])
        assert entry == fog.readings[seq - 1]
        assert (body["leaf_index"], body["tree_size"], f[3]) == (seq, 7, 7)
        path = [bytes.fromhex(h) for h in body["path"]]
        assert R.verify_inclusion(R.leaf(entry), seq, 7, path, f[4])
        # and the proof has teeth: another entry does not verify with it
        assert not R.verify_inclusion(R.leaf(entry + b"x"), seq, 7, path, f[4])


def test_inclusion_against_an_earlier_checkpoint_and_uppercase_dev(fog):
    for seq in (1, 2, 3):
        body = ok(fog, f"/v1/proof/inclusion?dev={DEV.upper()}&seq={seq}&size=4")
        f = signed_checkpoint(fog, body["checkpoint"])
        assert (f[2], f[3], body["tree_size"]) == (1, 4, 4)
        path = [bytes.fromhex(h) for h in body["path"]]
        assert R.verify_inclusion(R.leaf(fog.readings[seq - 1]), seq, 4, path, f[4])


def test_any_entry_is_proven_by_its_index_against_a_sealed_checkpoint(fog):
    for index, size in ((0, 7), (3, 7), (2, 4)):
        body = ok(fog, f"/v1/proof/entry?index={index}&size={size}")
        f = signed_checkpoint(fog, body["checkpoint"])
        entry = bytes.fromhex(body["entry"])
        assert entry == bytes.fromhex(ok(fog, f"/v1/entries/{index}")["entry"])
        assert (body["leaf_index"], body["tree_size"], f[3]) == (index, size, size)
        path = [bytes.fromhex(h) for h in body["path"]]
        assert R.verify_inclusion(R.leaf(entry), index, size, path, f[4])
        assert not R.verify_inclusion(R.leaf(entry + b"x"), index, size, path, f[4])
    assert error(fog, "/v1/proof/entry?index=7&size=7", 400) == (
        "entry 7 is not in a tree of size 7 (size must be >= 8)")
    assert error(fog, "/v1/proof/entry?index=1&size=5", 400).startswith(
        "size 5 is not the size of a sealed checkpoint")
    assert error(fog, "/v1/proof/entry?index=1", 400) == "missing parameter size"


def test_inclusion_errors_say_what_was_wrong(fog):
    q = "/v1/proof/inclusion?"
    assert error(fog, f"{q}dev={DEV}&seq=7", 404) == (
        f"reading 7 of {DEV} is logged but not yet covered by a checkpoint "
        "(it is entry 7; the latest checkpoint covers 7 entries)")
    assert error(fog, f"{q}dev={DEV}&seq=99", 404) == f"no reading 99 of meter {DEV} is logged"
    assert error(fog, f"{q}dev={STRANGER.id.hex()}&seq=1", 404) == (
        f"no reading 1 of meter {STRANGER.id.hex()} is logged")
    assert error(fog, f"{q}seq=1", 400) == "missing parameter dev"
    assert error(fog, f"{q}dev={DEV}", 400) == "missing parameter seq"
    assert error(fog, f"{q}dev={DEV}&seq=abc", 400) == (
        "seq must be a non-negative decimal integer, not 'abc'")
    assert error(fog, f"{q}dev={DEV}&seq=-1", 400) == (
        "seq must be a non-negative decimal integer, not '-1'")
    assert error(fog, f"{q}dev={DEV}&seq=", 400) == (
        "seq must be a non-negative decimal integer, not ''")
    assert error(fog, f"{q}dev={DEV}&seq=0", 400) == (
        "seq must be >= 1 (a meter's first reading is seq 1)")
    assert error(fog, f"{q}dev=xyz&seq=1", 400) == (
        "dev must be 16 hex characters (the meter's 8-byte id), not 'xyz'")
    assert error(fog, f"{q}dev={DEV[:-2]}&seq=1", 400).startswith("dev must be 16 hex")
    assert error(fog, f"{q}dev={DEV}&seq=1&size=5", 400) == (
        "size 5 is not the size of a sealed checkpoint "
        "(the latest covers 7 entries at height 2)")
    assert error(fog, f"{q}dev={DEV}&seq=1&size=8", 400).startswith("size 8 is not the size")
    assert error(fog, f"{q}dev={DEV}&seq=4&size=4", 400) == (
        f"reading 4 of {DEV} is entry 4, which a tree of size 4 does not hold "
        "(size must be >= 5)")
    assert error(fog, f"{q}dev={DEV}&seq=1&seq=2", 400) == "parameter seq is given more than once"
    assert error(fog, f"{q}dev={DEV}&seq=1&sise=4", 400) == (
        "unknown parameter 'sise': this endpoint takes dev, seq, size")
    # beyond what SQLite can hold: answered without a query that would overflow
    assert error(fog, f"{q}dev={DEV}&seq={10**25}", 404) == (
        f"no reading {10**25} of meter {DEV} is logged")
    assert error(fog, f"{q}dev={DEV}&seq=1&size={10**25}", 400).startswith(
        f"size {10**25} is not the size of a sealed checkpoint")
    assert error(fog, f"{q}dev={DEV}&seq={'9' * 31}", 400) == (
        "seq has 31 digits, more than any seq, size or index can have")


# -- /v1/proof/consistency --------------------------------------------------------------------
@pytest.mark.parametrize(("first", "second"), [(4, 7), (4, 4), (7, 7)])
def test_consistency_proofs_verify_between_signed_checkpoints(fog, first, second):
    body = ok(fog, f"/v1/proof/consistency?first={first}&second={second}")
    a = signed_checkpoint(fog, body["first_checkpoint"])
    b = signed_checkpoint(fog, body["second_checkpoint"])
    assert (a[3], b[3], body["first"], body["second"]) == (first, second, first, second)
    assert (body["first_root"], body["second_root"]) == (a[4].hex(), b[4].hex())
    path = [bytes.fromhex(h) for h in body["path"]]
    assert R.verify_consistency(first, second, a[4], b[4], path)
    if first != second:
        assert not R.verify_consistency(first, second, a[4], bytes(32), path)


def test_consistency_errors_say_what_was_wrong(fog):
    q = "/v1/proof/consistency?"
    assert error(fog, f"{q}first=5&second=7", 400) == (
        "first 5 is not the size of a sealed checkpoint (the latest covers 7 entries at height 2)")
    assert error(fog, f"{q}first=4&second=8", 400).startswith(
        "second 8 is not the size of a sealed checkpoint")
    assert error(fog, f"{q}first=7&second=4", 400) == (
        "first 7 is larger than second 4; a log only grows")
    assert error(fog, f"{q}first=4", 400) == "missing parameter second"
    assert error(fog, f"{q}second=4", 400) == "missing parameter first"
    assert error(fog, f"{q}first=x&second=7", 400) == (
        "first must be a non-negative decimal integer, not 'x'")
    assert error(fog, f"{q}first=4&second={10**20}", 400).startswith(
        f"second {10**20} is not the size of a sealed checkpoint")


# -- /v1/entries/{index} ----------------------------------------------------------------------
def test_entries(fog):
    e0 = ok(fog, "/v1/entries/0")
    assert e0["index"] == 0 and e0["type"] == P.ENROLLMENT
    e3 = ok(fog, "/v1/entries/3")
    assert e3 == {"index": 3, "entry": fog.readings[2].hex(),
                  "leaf_hash": R.leaf(fog.readings[2]).hex(), "type": P.READING}
    assert ok(fog, "/v1/entries/7")["entry"] == fog.readings[6].hex()  # logged, not yet sealed
    assert error(fog, "/v1/entries/8", 404) == "entry 8 is beyond the log, which holds 8 entries"
    assert error(fog, f"/v1/entries/{2**70}", 404).startswith(f"entry {2**70} is beyond")
    assert error(fog, "/v1/entries/-1", 400) == (
        "entry index must be a non-negative decimal integer, not '-1'")
    assert error(fog, "/v1/entries/abc", 400) == (
        "entry index must be a non-negative decimal integer, not 'abc'")
    assert error(fog, "/v1/entries/", 400) == (
        "entry index must be a non-negative decimal integer, not ''")
    assert error(fog, "/v1/entries/1?x=1", 400) == (
        "unknown parameter 'x': this endpoint takes no parameters")


# -- /v1/devices and /healthz ------------------------------------------------------------------
def test_devices_list_enrolled_pending_and_quarantine(fog):
    ing = fog.node.ingest
    fog_id = fog.node.key.id
    ing.process([birth(STRANGER, fog_id), chain(STRANGER, 1)[0]])  # listed, quarantined
    ing.decide(SPOOF.public_key.raw, "revoked", "cloned key")
    body = ok(fog, "/v1/devices")
    devices = {d["dev"]: d for d in body["devices"]}
    assert devices[DEV] == {"dev": DEV, "pub": METER.public_key.raw.hex(), "status": "active",
                            "reason": "test", "since": T0 + 86_400, "last_seq": 7,
                            "last_t": T0 + 900 * 6, "gaps": 0}
    spoof = devices[SPOOF.id.hex()]
    assert (spoof["status"], spoof["reason"], spoof["last_seq"]) == ("revoked", "cloned key", 0)
    assert body["pending"] == [{"dev": STRANGER.id.hex(), "pub": STRANGER.public_key.raw.hex()}]
    assert body["quarantined"] == 1
    # enrolling it releases the quarantine, and an enrolled meter is no longer pending
    ing.decide(STRANGER.public_key.raw, "active", "found")
    body = ok(fog, "/v1/devices")
    assert body["pending"] == [] and body["quarantined"] == 0
    assert {d["dev"]: d["last_seq"] for d in body["devices"]}[STRANGER.id.hex()] == 1


def test_healthz(fog):
    assert ok(fog, "/healthz") == {"ok": True, "log_size": 8, "checkpoint_height": 2}


# -- /metrics -----------------------------------------------------------------------------------
FAMILIES = {
    "accepted_total": "counter", "rejected_total": "counter", "quarantined": "gauge",
    "quarantined_total": "counter", "duplicates_total": "counter", "acks_total": "counter",
    "log_size": "gauge", "checkpoint_height": "gauge", "checkpoint_lag_entries": "gauge",
    "checkpoint_lag_seconds": "gauge", "devices": "gauge", "alerts_total": "counter",
}


def test_metrics_match_the_ingest_counters(fog):
    ing = fog.node.ingest
    now = int(fog.clock())
    forged = P.parse(fog.readings[0]).raw[:-64] + SPOOF.sign(P.parse(fog.readings[0]).tbs)
    future = reading(METER, 8, P.digest(fog.readings[6]), (now // 900 + 4) * 900)  # > skew
    twin = reading(METER, 2, P.digest(fog.readings[0]), T0 + 900, imp=999)
    unknown = chain(STRANGER, 1)[0]
    ing.decide(SPOOF.public_key.raw, "revoked", "cloned key")
    revoked = chain(SPOOF, 1)[0]
    outs, _ = ing.process([fog.readings[0], forged, future, twin, unknown, revoked, b"\x00junk",
                           reading(METER, 8, P.digest(fog.readings[6]), T0 + 900 * 7)])
    assert [o.status for o in outs] == ["duplicate", "rejected", "rejected", "rejected",
                                        "quarantined", "rejected", "rejected", "logged"]
    fog.clock.t += 42
    status, ctype, body = fetch(fog.url + "/metrics", token=fog.auditor)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    text = body.decode()
    for name, kind in FAMILIES.items():
        assert f"# TYPE meterledger_fog_{name} {kind}\n" in text
        assert f"# HELP meterledger_fog_{name} " in text
    m = parse_metrics(text)
    assert m["meterledger_fog_accepted_total"] == ing.counters["logged"] == 7 + 1
    rejected = {k: v for k, v in m.items() if k.startswith("meterledger_fog_rejected_total")}
    assert rejected == {f'meterledger_fog_rejected_total{{reason="{r}"}}': n
                        for r, n in ing.rejected.items()}
    assert {r for r in ing.rejected} >= {"bad_signature", "future_t", "equivocation", "revoked"}
    assert [r for r in rejected] == sorted(rejected)  # one series per reason, sorted
    assert m["meterledger_fog_duplicates_total"] == ing.counters["duplicates"] == 1
    assert m["meterledger_fog_acks_total"] == ing.counters["acks"] > 0
    assert m["meterledger_fog_quarantined_total"] == ing.counters["quarantined"] == 1
    assert m["meterledger_fog_quarantined"] == 1
    assert m["meterledger_fog_log_size"] == fog.node.log.size() == 10
    latest = fog.node.checkpoints.latest()
    assert latest is not None
    assert m["meterledger_fog_checkpoint_height"] == 2
    assert m["meterledger_fog_checkpoint_lag_entries"] == 10 - 7
    assert m["meterledger_fog_checkpoint_lag_seconds"] == fog.clock() - latest.t == 60 + 42
    assert m['meterledger_fog_devices{status="active"}'] == 1
    assert m['meterledger_fog_devices{status="revoked"}'] == 1
    assert m['meterledger_fog_alerts_total{kind="equivocation"}'] == 1


def test_metric_label_values_are_escaped_and_parse_back(fog):
    odd = 'a "quoted" \\ back}slash\nnewline'
    fog.node.ingest.rejected[odd] += 3
    text = render(fog.node, fog.clock())
    series = f'meterledger_fog_rejected_total{{reason="{escape_label(odd)}"}}'
    assert escape_label(odd) == 'a \\"quoted\\" \\\\ back}slash\\nnewline'
    assert f"{series} 3.0\n" in text  # prometheus_client writes every value as a float
    assert parse_metrics(text)[series] == 3


def test_parse_metrics_names_the_bad_line():
    assert parse_metrics("# HELP x y\nx 1 1700000000\ny{a=\"}\"} NaN\n\n") == {
        "x": 1.0, 'y{a="}"}': pytest.approx(float("nan"), nan_ok=True)}
    for text, message in [("x\n", "line 1: sample 'x' has no value"),
                          ("ok 1\nx two\n", "line 2: value 'two' of 'x' is not a number"),
                          ('x{a="1" 2\n', "line 1: label set"),
                          ("x 1\nx 2\n", "line 2: series 'x' appears twice")]:
        with pytest.raises(ValueError, match="^" + message.replace("{", "\\{")):
            parse_metrics(text)


# -- the server itself -----------------------------------------------------------------------------
def test_the_server_keeps_serving_after_malformed_requests(fog):
    assert error(fog, "/nope", 404).startswith("no endpoint '/nope'; the API has /v1/checkpoint")
    assert error(fog, "/v1/checkpoint/", 404).startswith("no endpoint")
    assert error(fog, "/%ff%00", 404).startswith("no endpoint '/%ff%00'")
    assert error(fog, "/v1/devices?%ff=%00", 400) == (
        "unknown parameter '\ufffd': this endpoint takes no parameters")
    # a request line the HTTP parser cannot read (control bytes in the target): a 400 in the
    # API's envelope before any route, and the connection closed
    status, headers, body = raw_answer(raw_request(fog, b"GET /\x7f\x00?\x01 HTTP/1.0\r\n\r\n"))
    assert (status, headers["content-type"], headers["connection"]) == (
        400, "application/json", "close")
    assert list(body) == ["error"] and body["error"].startswith(
        "invalid HTTP request: illegal request line")
    assert error(fog, "/v1/checkpoint?a=1", 400) == (
        "unknown parameter 'a': this endpoint takes no parameters")
    assert error(fog, f"/v1/proof/inclusion?dev=%zz{'g' * 14}&seq=1", 400).startswith(
        "dev must be 16 hex characters")
    assert error(fog, f"/v1/proof/inclusion?dev={DEV}&seq={'1' * 5000}", 400).startswith(
        "seq has 5000 digits")
    # `error` as it always was; `detail` names the endpoint and what it answers
    status, ctype, body = fetch(fog.url + "/healthz", method="POST")
    assert (status, ctype, json.loads(body)) == (
        405, "application/json", {"error": "method POST is not allowed: this endpoint is "
                                           "read-only (GET)",
                                  "detail": "POST '/healthz': this endpoint answers GET, HEAD"})
    status, ctype, body = fetch(fog.url + "/v1/enroll")
    assert (status, json.loads(body)["error"]) == (405, "method GET is not allowed: this "
                                                        "endpoint takes POST")
    # not HTTP (a TLS hello, say) and a request line without a version: 400 in the envelope
    for data in (b"\x16\x03\x01 garbage that is no HTTP\r\n\r\n", b"GET\r\n\r\n"):
        status, headers, body = raw_answer(raw_request(fog, data))
        assert (status, headers["content-type"], list(body)) == (400, "application/json",
                                                                 ["error"]), data
        assert body["error"].startswith("invalid HTTP request: illegal request line"), body
    too_long = raw_request(fog, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw_answer(too_long)[::2] == (
        414, {"error": "the request target is longer than 65536 bytes"})
    # the client sends part of a request line and closes its side: answered 400
    half = raw_request(fog, b"GET /healthz HTT")
    assert raw_answer(half)[::2] == (
        400, {"error": "the client closed the connection in the middle of a request"})
    assert ok(fog, "/healthz")["ok"] is True


def test_head_answers_without_a_body(fog):
    status, ctype, body = fetch(fog.url + "/v1/checkpoint", method="HEAD")
    assert (status, ctype, body) == (200, "application/json", b"")


def test_an_unexpected_exception_is_a_logged_500_without_details(fog, monkeypatch, caplog):
    def broken(self: Any) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(reads.CheckpointsView, "latest", broken)
    assert error(fog, "/healthz", 500) == "internal"
    assert any("disk on fire" in (r.exc_text or "") for r in caplog.records)
    monkeypatch.undo()
    assert ok(fog, "/healthz")["log_size"] == 8


ENDPOINTS = ["/v1/checkpoint", f"/v1/proof/inclusion?dev={DEV}&seq=1",
             "/v1/proof/consistency?first=4&second=7", f"/v1/proof/enrollment?dev={DEV}&size=7",
             f"/v1/proof/enrollment?dev={STRANGER.id.hex()}&size=7", "/v1/entries/0",
             "/v1/devices", "/healthz"]


def test_reads_never_wait_for_the_ingest_lock(fog):
    # what the ingest thread holds while it writes: held here for the whole test, every read
    # still answers (its own connections, a snapshot); only /metrics reads under it
    # (fog_node.metrics), and answers once it is released
    with ThreadPoolExecutor(len(ENDPOINTS) + 1) as pool:
        with fog.node.lock:
            futures = [pool.submit(fetch, fog.url + path, "GET", fog.auditor)
                       for path in ENDPOINTS]
            got = [f.result(timeout=30)[0] for f in futures]
            metrics = pool.submit(fetch, fog.url + "/metrics", "GET", fog.auditor)
            fog.node.ingest.process(chain(METER, 8)[7:])  # the holder writes meanwhile
            assert ok(fog, "/healthz")["log_size"] == 9  # and reads see it committed
        assert metrics.result(timeout=30)[0] == 200
    assert got == [200] * 4 + [404] + [200] * 3


# -- enroll and revoke over HTTP (operator) ---------------------------------------------------------
def post(fog: Fog, path: str, doc: Any, token: str | None) -> tuple[int, Any]:
    status, _, body = fetch(fog.url + path, "POST", token, json.dumps(doc).encode())
    return status, json.loads(body)


def test_enroll_and_revoke_over_http_do_what_the_cli_does(fog):
    pub = STRANGER.public_key.raw.hex()
    fog.node.ingest.process([chain(STRANGER, 1)[0]])  # quarantined until enrolled
    with pytest.raises(ChainClientError, match="HTTP 403: this endpoint needs the operator"):
        FogClient(fog.url, token=fog.auditor).decide("enroll", STRANGER.public_key.raw)
    doc = FogClient(fog.url, token=fog.operator).decide("enroll", STRANGER.public_key.raw,
                                                        "site visit 42")
    assert (doc["dev"], doc["status"], doc["reason"]) == (STRANGER.id.hex(), "active",
                                                          "site visit 42")
    queued = fog.node.config.data_dir / REQUESTS / doc["queued"]
    assert json.loads(queued.read_text()) == {"pub": pub, "status": "active",
                                              "reason": "site visit 42"}  # the CLI's shape
    assert STRANGER.id.hex() not in {d["dev"] for d in ok(fog, "/v1/devices")["devices"]}
    acks: list[Any] = []
    apply_queued(fog.node, acks.extend)  # what the ingest thread does between groups
    assert not queued.exists() and [dev for dev, _ in acks] == [STRANGER.id]
    devices = {d["dev"]: d for d in ok(fog, "/v1/devices")["devices"]}
    assert (devices[STRANGER.id.hex()]["status"], devices[STRANGER.id.hex()]["last_seq"]) == (
        "active", 1)
    # revoke: a reason is required; then the decision is logged like the CLI's
    assert post(fog, "/v1/revoke", {"pub": pub}, fog.operator) == (
        400, {"error": "a revocation needs a reason"})
    assert post(fog, "/v1/revoke", {"pub": pub, "reason": "stolen"}, fog.operator)[0] == 202
    apply_queued(fog.node, acks.extend)
    devices = {d["dev"]: d for d in ok(fog, "/v1/devices")["devices"]}
    assert (devices[STRANGER.id.hex()]["status"], devices[STRANGER.id.hex()]["reason"]) == (
        "revoked", "stolen")
    last = ok(fog, f"/v1/entries/{fog.node.log.size() - 1}")
    assert last["type"] == P.ENROLLMENT


def test_enroll_refuses_what_the_cli_would_and_queues_nothing(fog):
    pub = STRANGER.public_key.raw.hex()
    bad = [
        (b"not json", "the body must be a JSON object {\"pub\": hex, \"reason\": text}"),
        (b"[1]", "the body must be a JSON object with pub and, optionally, mqtt_hash and "
                 "reason (nothing else)"),
        (json.dumps({"pub": pub, "status": "revoked"}).encode(), "the body must be a JSON "
         "object with pub and, optionally, mqtt_hash and reason (nothing else)"),
        (json.dumps({"pub": pub[:-2]}).encode(), "pub must be a SEC1 P-256 public key, 130 "
         f"hex characters, not {pub[:40] + '...'!r}"),
        (json.dumps({"pub": "04" + "00" * 64}).encode(), "pub must be a SEC1 P-256 public "
         "key, 130 hex characters, not '04" + "0" * 38 + "...'"),
        (json.dumps({"pub": pub, "reason": 7}).encode(), "pub and reason must be JSON strings"),
        (json.dumps({"pub": pub, "reason": "x" * 256}).encode(), "reason must be printable "
         "text of at most 255 bytes (UTF-8)"),
        (json.dumps({"pub": pub, "reason": "\ud800"}).encode(), "reason must be printable "
         "text of at most 255 bytes (UTF-8)"),
        (json.dumps({"pub": pub, "mqtt_hash": "nope"}).encode(), "mqtt_hash: 'nope' is not "
         "a mosquitto $7$ (PBKDF2-SHA512) password hash"),
    ]
    for body, message in bad:
        status, _, answer = fetch(fog.url + "/v1/enroll", "POST", fog.operator, body)
        assert (status, json.loads(answer)) == (400, {"error": message}), body
    # the auditor may read, not decide; nobody may without a token
    status, _, answer = fetch(fog.url + "/v1/enroll", "POST", fog.auditor,
                              json.dumps({"pub": pub}).encode())
    assert (status, json.loads(answer)) == (403, {
        "error": "this endpoint needs the operator token; the one given is the auditor token"})
    assert fetch(fog.url + "/v1/revoke", "POST", None, b"{}")[0] == 401
    assert not (fog.node.config.data_dir / REQUESTS).exists()


def test_start_picks_a_port_and_stop_closes_it(fog):
    with pytest.raises(FogError, match="already serving on port"):
        fog.api.start()
    second = FogAPI(fog.node)
    port = second.start("127.0.0.1", 0)
    assert port not in (0, fog.api.port)
    assert fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200
    second.stop()
    second.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_a_signed_image_is_pushed_and_followed_with_the_ota_command(
        fog: Fog, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `meterledger ota push|status` against the fog's operator tier (section 22): queued,
    # then the push's state; an unsigned image and a wrong token are refused with the reason
    from fog_node import ota
    from tools import ota as ota_tool

    key = P.SigningKey.generate()
    unsigned = tmp_path / "fw.img"
    unsigned.write_bytes(ota.build("9.9.9", [("app.py", b"print('new')\n")], ""))
    signed = tmp_path / "fw.signed.img"
    signed.write_bytes(ota.sign(unsigned.read_bytes(), key))
    op = tmp_path / "operator.token"
    op.write_text(fog.operator)
    au = tmp_path / "auditor.token"
    au.write_text(fog.auditor)
    dev = METER.public_key.id.hex()
    common = ["--fog", fog.url.removeprefix("http://"), "--dev", dev]
    assert ota_tool.main(["status", *common, "--token-file", str(op)]) == 1
    assert f"no firmware was pushed to meter {dev}" in capsys.readouterr().err
    assert ota_tool.main(["push", str(signed), *common, "--token-file", str(op)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"queued": True, "dev": dev, "version": "9.9.9",
                   "digest": ota.parse_image(signed.read_bytes()).digest.hex()}
    assert list((fog.node.config.data_dir / "ota" / "queue").iterdir())
    assert ota_tool.main(["push", str(signed), *common, "--token-file", str(au)]) == 1
    assert "operator" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        ota_tool.main(["push", str(unsigned), *common, "--token-file", str(op)])
    assert done.value.code == 2 and "unsigned" in capsys.readouterr().err


def test_an_image_whose_manifest_has_odd_keys_is_a_400_not_a_500(fog: Fog) -> None:
    # section 22: a manifest map with a text key among the integers is refused with the reason
    key = P.SigningKey.generate()
    head = P.sign1_encoded(key, P.encode({0: 20, 1: key.id, "a": 1}))
    dev = METER.public_key.id.hex()
    status, _, body = fetch(f"{fog.url}/v1/firmware?dev={dev}", "POST", fog.operator,
                            head + b"x" * 10)
    assert status == 400 and b"keys" in body, body
    assert not (fog.node.config.data_dir / "ota" / "queue").exists()
