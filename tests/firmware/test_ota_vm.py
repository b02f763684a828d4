"""Firmware updates inside the real MicroPython VM (docs/PROTOCOL.md section 22): an image
built and signed on the host (fog_node.ota) is fed in chunks to core/ota.py on the VM's own
flash filesystem, verified with the firmware's P-256, installed by core/fwstore.py with
backups, and rolled back; forged, truncated and downgraded images are refused there for the
same reasons as on CPython, and the old files stay."""

from __future__ import annotations

import json

import pytest

from fog_node import ota as O
from hardware.mpvm import run_micropython
from meterledger import wire as P

pytestmark = [pytest.mark.vm]

REL = P.SigningKey.from_int(0x5EED_0F_7E1EA5E)
OTHER = P.SigningKey.from_int(0xBAD_C0DE)
NEW = [("app.py", b"# new app\n" * 40), ("core/extra.py", b"# extra\n" * 30)]

SCRIPT = """
import json
from core import fwstore
from core.compat import unhexlify
from core.fs import VfsFS
from core.keys import VerifyingKey
from core.ota import OtaError, Updater

with open("/flash/cases.json") as f:
    cases = json.load(f)
rel = VerifyingKey(unhexlify(cases["pub"]))
data = VfsFS("/flash/data")
code = VfsFS("/flash/code")
code.mkdir("core")
code.write("app.py", b"# old app\\n")
code.write("core/extra.mpy", b"MPY old")
out = {}


def files():
    return sorted((p, code.read(p).decode()) for p in ("app.py", "core/extra.py", "core/extra.mpy")
                  if code.exists(p))


old = files()
for name, case in cases["cases"].items():
    with open("/flash/" + name + ".img", "rb") as f:
        blob = f.read()
    u = Updater(data, rel, "host", running="0.1.0")
    sid = unhexlify(case["sid"])
    got = 0
    for off in range(0, min(len(blob), case["upto"]), 97):
        got = u.chunk(sid + off.to_bytes(4, "big") + blob[off:min(off + 97, case["upto"])])
    try:
        version, paths = u.verify(unhexlify(case["digest"]), "0.1.0")
    except OtaError as e:
        out[name] = [e.reason, got, files() == old,
                     sorted(n for n in data.listdir("ota") if n.startswith("n"))]
        u.drop()
        continue
    except Exception as e:  # noqa: BLE001  what the meter must never let through
        out[name] = ["escaped " + repr(e)]
        continue
    data.write("ota/b0", b"# stale backup\\n")  # left by an earlier install: never reused
    data.write("ota/s0", b"# stale shadow\\n")
    fwstore.install(data, code, version, paths, "0.1.0")
    installed = files()
    state = fwstore.load(data)["state"]
    fwstore.rollback(data, code, "no_ack: test")
    out[name] = ["installed " + version, got, state, installed, files() == old,
                 fwstore.load(data)["version"]]
print(json.dumps(out))
"""


def test_images_are_checked_installed_and_rolled_back_inside_micropython():
    imgs = {"good": O.sign(O.build("0.2.0", NEW, "", 1), REL),
            "forged": O.sign(O.build("0.2.0", NEW, "", 1), OTHER),
            "downgrade": O.sign(O.build("0.0.9", NEW, "", 1), REL)}
    cases = {}
    for name, data in imgs.items():
        img = O.parse_image(data)
        cases[name] = {"sid": img.sid.hex(), "digest": img.digest.hex(), "upto": len(data)}
    odd = P.sign1_encoded(REL, P.encode({0: 20, 1: REL.id, "a": 1}))
    imgs["odd_keys"] = odd + b"x" * 300
    cases["odd_keys"] = {"sid": P.digest(odd)[:8].hex(), "digest": P.digest(odd).hex(),
                         "upto": len(imgs["odd_keys"])}
    imgs["truncated"] = imgs["good"]
    cases["truncated"] = dict(cases["good"], upto=len(imgs["good"]) - 50)
    files = {f"/flash/{n}.img": d for n, d in imgs.items()}
    files["/flash/cases.json"] = json.dumps({"pub": REL.public_key.raw.hex(),
                                             "cases": cases}).encode()
    out = json.loads(run_micropython(SCRIPT, files=files, timeout=300).strip().splitlines()[-1])
    n = len(imgs["good"])
    assert out["good"] == ["installed 0.2.0", n, "trial",
                           [["app.py", "# new app\n" * 40], ["core/extra.py", "# extra\n" * 30]],
                           True, "0.1.0"]
    # refused as soon as the manifest is in: the count stops there, no file byte is staged
    head = len(O.parse_image(imgs["forged"]).head)
    assert out["forged"] == ["forged", -(-head // 97) * 97, True, []]
    assert out["downgrade"][0] == "downgrade" and out["downgrade"][1] < n
    assert out["downgrade"][2:] == [True, []]
    assert out["odd_keys"][0] == "bad_manifest" and out["odd_keys"][2:] == [True, []]
    assert out["truncated"][0] == "truncated" and out["truncated"][2] is True
