"""Sign, verify and decode SPEC messages with the firmware core.

    python -m tools.reading sign --key KEYHEX [--micropython] < reading.json
    python -m tools.reading verify --pub PUBHEX < message.hex
    python -m tools.reading decode < message.hex

`sign` runs the meter's own code (firmware/core), under CPython or, with --micropython,
inside the real MicroPython VM, so its output is what a meter would send.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hardware.firmware import module
from meterledger import errors
from meterledger.infra.args import ArgumentParser
from meterledger.wire.names import TYPE_NAMES, named

_READING_KEYS = ("seq", "t", "dur", "imp", "exp", "flags", "prev")


class InputError(errors.MeterLedgerError, ValueError):
    """reading.json or a hex argument is not what the tool expects."""


def _hex(text: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise InputError(f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise InputError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def parse_reading_json(text: str) -> dict[str, Any]:
    """reading.json -> {"seq":..,"t":..,"dur":..,"imp":..,"exp":..,"flags":..,"prev":bytes,"q":{int:int}|None}."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"reading.json is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InputError("reading.json must be an object")
    unknown = set(doc) - set(_READING_KEYS) - {"q"}
    if unknown:
        raise InputError(f"reading.json has unknown keys: {sorted(unknown)}")
    out: dict[str, Any] = {}
    for key in _READING_KEYS:
        if key not in doc:
            raise InputError(f"reading.json is missing {key!r}")
        if key == "prev":
            if not isinstance(doc[key], str):
                raise InputError("prev must be a hex string")
            out[key] = _hex(doc[key], "prev", 32)
        else:
            v = doc[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InputError(f"{key} must be a non-negative integer")
            out[key] = v
    q = doc.get("q")
    if q is None:
        out["q"] = None
    elif isinstance(q, dict):
        qq: dict[int, int] = {}
        for k, v in q.items():
            if not k.isdigit() or not isinstance(v, int) or isinstance(v, bool):
                raise InputError(f"q entry {k!r}: keys are SPEC numbers as strings, values integers")
            qq[int(k)] = v
        out["q"] = qq
    else:
        raise InputError("q must be an object")
    return out


def sign_cpython(key: bytes, r: dict[str, Any]) -> bytes:
    keys, cose, messages = module("core.keys"), module("core.cose"), module("core.messages")
    k = keys.SigningKey(key)
    fields = messages.reading(k.id, r["seq"], r["t"], r["dur"], r["imp"], r["exp"], r["flags"],
                              r["prev"], r["q"])
    messages.check_fields(fields)
    msg: bytes = cose.sign1(k, fields)
    return msg


def sign_micropython(key: bytes, r: dict[str, Any]) -> bytes:
    from hardware.mpvm import run_micropython

    script = (
        "from core import cose, keys, messages\n"
        "from core.compat import hexlify, unhexlify\n"
        f"k = keys.SigningKey(unhexlify({key.hex()!r}))\n"
        f"f = messages.reading(k.id, {r['seq']}, {r['t']}, {r['dur']}, {r['imp']}, {r['exp']}, "
        f"{r['flags']}, unhexlify({r['prev'].hex()!r}), {r['q']!r})\n"
        "messages.check_fields(f)\n"
        "print(hexlify(cose.sign1(k, f)))\n"
    )
    return bytes.fromhex(run_micropython(script).strip())


def verify(msg: bytes, pub: bytes) -> dict[str, Any]:
    """Fields of a valid message signed by pub; raises with the SPEC rejection reason."""
    keys, cose, messages = module("core.keys"), module("core.cose"), module("core.messages")
    m = cose.verify(msg, keys.VerifyingKey(pub))
    messages.check_fields(m.fields)
    return describe(m)


def decode(msg: bytes) -> dict[str, Any]:
    """Structure-checked fields of any SPEC message, signature not checked (no key)."""
    cose = module("core.cose")
    return describe(cose.parse(msg))


def describe(m: Any) -> dict[str, Any]:
    cose = module("core.cose")
    return {
        "type_name": TYPE_NAMES.get(m.type, str(m.type)),
        "kid": m.kid.hex(),
        "digest": cose.digest(m.raw).hex(),
        "fields": named(m.fields),
    }


def _read_hex_stdin() -> bytes:
    return _hex(sys.stdin.read(), "message on stdin")


def main(argv: list[str] | None = None, prog: str = "python -m tools.reading") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sign", help="sign reading.json (stdin) with a meter key; prints hex")
    s.add_argument("--key", required=True, help="32-byte private scalar, hex")
    s.add_argument("--micropython", action="store_true", help="sign inside the MicroPython VM")
    v = sub.add_parser("verify", help="verify a hex message (stdin) against a public key")
    v.add_argument("--pub", required=True, help="65-byte SEC1 uncompressed public key, hex")
    sub.add_parser("decode", help="decode a hex message (stdin) without a key")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "sign":
            key = _hex(args.key, "--key", 32)
            reading = parse_reading_json(sys.stdin.read())
            msg = sign_micropython(key, reading) if args.micropython else sign_cpython(key, reading)
            print(msg.hex())
            return 0
        if args.cmd == "verify":
            pub = _hex(args.pub, "--pub", 65)
            out = verify(_read_hex_stdin(), pub)
        else:
            out = decode(_read_hex_stdin())
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # CoseError, FieldError, P256Error, CBORError: a rejection
        reason = getattr(e, "reason", "bad_input")
        print(f"rejected: {reason}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
