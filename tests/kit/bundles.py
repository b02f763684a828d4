"""What every offline bundle checker (tools.audit's verify, certificate, trade) owes its
tests: a file that is no bundle of its kind is exit 2 with one line naming what is wrong."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meterledger import wire as P
from meterledger.wire import chain as C
from tools.audit import BundleError

ROOT = Path(__file__).resolve().parents[2]


def assert_input_error(command: str, path: Path, doc: Any, trust: str, message: str) -> None:
    """`python -m tools.audit COMMAND PATH --trust TRUST` on `doc` (bytes as they are, else
    JSON) exits 2 with one line on stderr that names the file and holds `message`."""
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    r = subprocess.run([sys.executable, "-m", "tools.audit", command, str(path), "--trust",
                        trust], cwd=ROOT, capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (2, ""), r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {path}: ") and message in r.stderr, r.stderr


def assert_rejected(verify: Callable[[Any], Any], bundle: dict[str, Any],
                    tamper: Callable[[dict[str, Any], Any], None], world: Any,
                    check: str) -> None:
    """A copy of `bundle` broken by `tamper` fails `verify` at `check`, in one line."""
    b = copy.deepcopy(bundle)
    tamper(b, world)
    with pytest.raises(BundleError) as e:
        verify(b)
    assert e.value.check == check, str(e.value)
    assert "\n" not in str(e.value)


def flip(hexstr: str) -> str:
    """The hex of `hexstr`'s bytes with the last bit of the last one flipped."""
    b = bytearray(bytes.fromhex(hexstr))
    b[-1] ^= 0x01
    return b.hex()


def reseal(b: dict[str, Any], digest: str, sealer: P.SigningKey,
           keys: dict[bytes, P.SigningKey], body: dict[int, Any] | None = None,
           prev_t: int | None = None, key: P.SigningKey | None = None,
           fields: dict[int, Any] | None = None, drop: tuple[int, ...] = ()) -> str:
    """A colluding sealer, for a bundle of transaction sections (a trade's, a bill's):
    transaction `digest` signed again by its sender (its key from `keys`) or by `key`
    (whose public key the bundle then gives), with body keys `body` (and `fields`) changed
    and `drop` dropped, in a block of its own `sealer` signs, after a block at `prev_t` if
    given. Returns the new digest; what names the old one is the caller's to follow."""
    sec = b["transactions"].pop(digest)
    tf = P.parse(bytes.fromhex(sec["transaction"])).fields
    signer = key or keys[tf[1]]
    kept = {k: v for k, v in {**tf[4], **(body or {})}.items() if k not in drop}
    raw = P.sign1(signer, {**tf, 1: signer.id, 4: kept, **(fields or {})}, check=False)
    b["keys"][signer.id.hex()] = signer.public_key.raw.hex()
    prev = bytes.fromhex(sec["prev_header"])
    if prev_t is not None:
        prev = P.sign1(sealer, {**P.parse(prev).fields, 6: prev_t})
    header = P.sign1(sealer, {**P.parse(bytes.fromhex(sec["block_header"])).fields,
                              3: P.digest(prev), 4: C.tx_root([raw]), 5: 1})
    new = P.digest(raw).hex()
    b["transactions"][new] = {**sec, "transaction": raw.hex(), "block_header": header.hex(),
                              "sealer_signature": P.parse(header).signature.hex(),
                              "tx_index": 0, "tx_path": [], "prev_header": prev.hex()}
    return new
