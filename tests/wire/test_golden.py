"""Golden vectors from the independent reference (tests/reference.py) against the firmware
core, byte for byte, under CPython and under the real MicroPython VM."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core import cose, keys
from core import messages as M
from tests import reference

GOLDEN = json.loads(reference.VECTORS.read_text())


def test_vectors_file_is_what_the_reference_makes():
    # a hand edit, or a change in the reference, shows up here
    assert reference.build() == GOLDEN


@pytest.mark.parametrize("case", GOLDEN["valid"], ids=lambda c: c["name"])
def test_firmware_signs_golden_bytes(case: dict[str, Any]):
    k = keys.SigningKey(bytes.fromhex(case["key"]))
    assert k.pub.hex() == case["pub"]
    fields = reference.untag_bytes(case["fields"])
    msg = cose.sign1(k, fields)
    assert msg.hex() == case["message"]
    assert cose.digest(msg).hex() == case["digest"]
    m = cose.verify(msg, keys.VerifyingKey(k.pub))
    M.check_fields(m.fields)
    assert m.fields == fields


@pytest.mark.parametrize("case", GOLDEN["broken"], ids=lambda c: c["name"])
def test_firmware_rejects_broken_case_for_its_reason(case: dict[str, str]):
    vk = keys.VerifyingKey(bytes.fromhex(GOLDEN["signer_pub"]))
    # the envelope and signature, then the payload's schema, ranges and rules (bad_fields)
    with pytest.raises((cose.CoseError, M.FieldError)) as err:
        M.check_fields(cose.verify(bytes.fromhex(case["message"]), vk).fields)
    assert err.value.reason == case["reason"], str(err.value)


_VM_SCRIPT = """
import json
from core import cose, keys, messages
from core.compat import hexlify, unhexlify

def untag(o):
    if isinstance(o, dict):
        if list(o.keys()) == ["hex"]:
            return unhexlify(o["hex"])
        return {int(k): untag(v) for k, v in o.items()}
    return o

with open("/flash/golden.json") as f:
    g = json.load(f)
out = {"valid": {}, "broken": {}}
for c in g["valid"]:
    k = keys.SigningKey(unhexlify(c["key"]))
    msg = cose.sign1(k, untag(c["fields"]))
    m = cose.verify(msg, keys.VerifyingKey(k.pub))
    messages.check_fields(m.fields)
    out["valid"][c["name"]] = [hexlify(k.pub), hexlify(msg), hexlify(cose.digest(msg))]
vk = keys.VerifyingKey(unhexlify(g["signer_pub"]))
for c in g["broken"]:
    try:
        messages.check_fields(cose.verify(unhexlify(c["message"]), vk).fields)
        out["broken"][c["name"]] = "ACCEPTED"
    except (cose.CoseError, messages.FieldError) as e:
        out["broken"][c["name"]] = e.reason
print(json.dumps(out))
"""


@pytest.mark.vm
def test_micropython_vm_matches_golden_vectors_byte_for_byte():
    from hardware.mpvm import run_micropython

    raw = json.dumps(GOLDEN).encode()
    out = json.loads(run_micropython(_VM_SCRIPT, files={"/flash/golden.json": raw}).strip().splitlines()[-1])
    for case in GOLDEN["valid"]:
        assert out["valid"][case["name"]] == [case["pub"], case["message"], case["digest"]], case["name"]
    for case in GOLDEN["broken"]:
        assert out["broken"][case["name"]] == case["reason"], case["name"]
