"""`python -m tools.reading` as a user runs it: sign (CPython and MicroPython VM), verify,
decode, and the exit codes and messages of every rejection."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests import reference

GOLDEN = json.loads(reference.VECTORS.read_text())
FIRST = next(c for c in GOLDEN["valid"] if c["name"] == "reading_q_flags")


def cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.reading", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def reading_json(case: dict[str, Any]) -> str:
    f = case["fields"]
    doc = {"seq": f["2"], "t": f["3"], "dur": f["4"], "imp": f["5"], "exp": f["6"],
           "flags": f["7"], "prev": f["8"]["hex"]}
    if "9" in f:
        doc["q"] = f["9"]
    return json.dumps(doc)


@pytest.mark.parametrize("engine", ["cpython", "micropython"])
def test_sign_reproduces_the_golden_message(engine: str):
    args = ["sign", "--key", FIRST["key"]] + (["--micropython"] if engine == "micropython" else [])
    r = cli(*args, stdin=reading_json(FIRST))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == FIRST["message"]


def test_verify_prints_named_fields():
    r = cli("verify", "--pub", FIRST["pub"], stdin=FIRST["message"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["type_name"] == "reading" and out["digest"] == FIRST["digest"]
    assert out["fields"]["seq"] == 2 and out["fields"]["flag_names"] == ["POWER_FAIL", "PARTIAL"]
    assert out["fields"]["q"] == {"1": 2281, "2": 2399, "3": 4200, "4": 150, "5": -35}


@pytest.mark.parametrize("case", GOLDEN["broken"][:8] + GOLDEN["broken"][-6:], ids=lambda c: c["name"])
def test_verify_exits_1_with_the_reason(case: dict[str, Any]):
    r = cli("verify", "--pub", GOLDEN["signer_pub"], stdin=case["message"])
    assert r.returncode == 1
    assert r.stderr.startswith(f"rejected: {case['reason']}: ")


def test_verify_with_the_wrong_key_is_rejected():
    other = next(c for c in GOLDEN["valid"] if c["name"] == "ack")["pub"]
    r = cli("verify", "--pub", other, stdin=FIRST["message"])
    assert r.returncode == 1 and "kid_mismatch" in r.stderr


def test_decode_needs_no_key_and_reads_every_type():
    for case in GOLDEN["valid"]:
        r = cli("decode", stdin=case["message"])
        assert r.returncode == 0, (case["name"], r.stderr)
        assert json.loads(r.stdout)["digest"] == case["digest"]


def test_schema_violation_in_a_signed_message_is_rejected():
    bad = json.loads(reading_json(FIRST))
    bad["t"] += 1  # off the grid, and CLOCK_UNSYNCED not set
    r = cli("sign", "--key", FIRST["key"], stdin=json.dumps(bad))
    assert r.returncode == 1 and "bad_fields" in r.stderr and "multiple of dur" in r.stderr


@pytest.mark.parametrize("stdin,needle", [
    ("not json", "not JSON"),
    ('{"seq": 1}', "missing 't'"),
    ('{"seq": 1, "t": 0, "dur": 900, "imp": 0, "exp": 0, "flags": 0, "prev": "zz"}', "prev is not hex"),
    ('{"seq": 1, "t": 0, "dur": 900, "imp": 0, "exp": 0, "flags": 0, "prev": "00", "x": 1}', "unknown keys"),
    ('{"seq": -1, "t": 0, "dur": 900, "imp": 0, "exp": 0, "flags": 0, "prev": "00"}', "non-negative"),
])
def test_bad_input_is_an_input_error(stdin: str, needle: str):
    r = cli("sign", "--key", FIRST["key"], stdin=stdin)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_bad_key_is_an_input_error():
    r = cli("sign", "--key", "abcd", stdin=reading_json(FIRST))
    assert r.returncode == 2 and "--key must be 32 bytes" in r.stderr
