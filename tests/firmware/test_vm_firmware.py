"""The same firmware core on real MicroPython and on CPython, byte for byte.

A whole meter scenario (boot, readings, an ack, a command, a power-cut reboot) runs in the
MicroPython VM on its own flash filesystem and under CPython on the in-memory twin, with the
same key and clock; every message must be identical. Mutated messages are rejected inside the
VM for exactly the reasons CPython gives.
"""

from __future__ import annotations

import json
import random

import pytest

from core import cose
from hardware.mpvm import run_micropython

SCENARIO = """
from core import cose, keys, messages as M
from core.fs import %(fs)s
from core.meter import Meter
from core.sources import Synthetic

FOG = keys.SigningKey(0xF0F0F0F0)
T0 = 1800000000
rng = [7]

def rand(n):
    # deterministic "RNG" so both interpreters make the same key
    rng[0] = (rng[0] * 1103515245 + 12345) %% 2147483648
    return (rng[0] * 99991).to_bytes(32, "big")[:n]

fs = %(fs)s(%(root)s)
out = []

def run(m, a, b):
    for now in range(a, b + 1, 10):
        r = m.tick(now, now - a)
        if r:
            out.append(r)

m = Meter(fs, Synthetic(seed=5), rand, FOG.id, FOG.pub)
m.boot(T0 - 35, True)
out.append(m.birth())
run(m, T0 - 35, T0 + 1800)
a = cose.sign1(FOG, M.ack(m.id, 2, cose.digest(m.spool.get(2)), T0, FOG.id))
m.handle_ack(a)
res, f = m.accept_command(cose.sign1(FOG, M.command(m.id, 9, "limit", {1: 2500}, T0 + 9999, b"", FOG.id)), T0 + 1805)
out.append(m.finish_command(f, T0 + 1805, True, "limit 2500 W"))
res, f = m.accept_command(cose.sign1(keys.SigningKey(99), M.command(m.id, 10, "relay", {1: False}, T0 + 9999, b"", FOG.id)), T0 + 1806)
out.append(res)
m2 = Meter(fs, Synthetic(seed=5), rand, FOG.id, FOG.pub)
m2.boot(T0 + 4000, True, "power")
run(m2, T0 + 4000, T0 + 4600)
out.append(m2.birth())
for msg in out:
    print(cose.digest(msg).hex(), msg.hex())
print("pending", [s for s, _ in m2.pending()])
"""


def cpython_scenario() -> list[str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(SCENARIO % {"fs": "MemFS", "root": ""}, {})
    return buf.getvalue().split("\n")


@pytest.mark.vm
def test_meter_scenario_is_byte_identical_on_micropython_and_cpython():
    vm = run_micropython(SCENARIO % {"fs": "VfsFS", "root": '"/flash/meter"'}).split("\n")
    cp = cpython_scenario()
    assert vm == cp
    kinds = [cose.parse(bytes.fromhex(line.split()[1])).fields[0] for line in cp if line and not line.startswith("pending")]
    assert kinds.count(1) == 3 and kinds.count(2) == 2 and kinds.count(5) == 2
    assert cp[-2] == "pending [3]"  # 1 and 2 were acknowledged before the power cut
    results = [cose.parse(bytes.fromhex(line.split()[1])).fields for line in cp
               if line and not line.startswith("pending")
               and cose.parse(bytes.fromhex(line.split()[1])).fields[0] == 5]
    assert [(r[2], r[3]) for r in results] == [(9, 0), (10, 1)]  # done; forged: rejected


def mutations(msg: bytes, n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        m = bytearray(msg)
        kind = rnd.randrange(4)
        pos = rnd.randrange(len(m))
        if kind == 0:
            m[pos] ^= 1 << rnd.randrange(8)
        elif kind == 1:
            m[pos] = (m[pos] + rnd.randrange(1, 256)) % 256
        elif kind == 2:
            del m[pos:]
        else:
            m[pos:pos] = bytes([rnd.randrange(256)])
        out.append(bytes(m))
    return out


VERIFY_ALL = """
import json
from core import cose, keys
from core.compat import unhexlify
with open("/flash/cases.json") as f:
    c = json.load(f)
vk = keys.VerifyingKey(unhexlify(c["pub"]))
reasons = []
for h in c["msgs"]:
    try:
        cose.verify(unhexlify(h), vk)
        reasons.append("ACCEPTED")
    except cose.CoseError as e:
        reasons.append(e.reason)
print(json.dumps(reasons))
"""


@pytest.mark.vm
def test_mutations_are_rejected_in_the_vm_for_the_same_reasons():
    from core import keys
    from core import messages as M

    k = keys.SigningKey(0xABCDEF)
    msg = cose.sign1(k, M.reading(k.id, 77, 1_800_000_000, 900, 5000, 12, M.SKIPPED, b"\x33" * 32,
                                  {1: 2301, 4: 900}))
    muts = mutations(msg, 120, seed=2026)
    expected = []
    for m in muts:
        with pytest.raises(cose.CoseError) as err:
            cose.verify(m, keys.VerifyingKey(k.pub))
        expected.append(err.value.reason)
    cases = json.dumps({"pub": k.pub.hex(), "msgs": [m.hex() for m in muts]}).encode()
    got = json.loads(run_micropython(VERIFY_ALL, files={"/flash/cases.json": cases}).strip())
    assert got == expected
    assert len(set(expected)) >= 4  # the batch exercises several different rules
