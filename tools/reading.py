"""Sign, verify and decode SPEC messages with the firmware core.

    python -m tools.reading sign --key KEYHEX [--micropython] < reading.json
    python -m tools.reading verify --pub PUBHEX [--format json|text] < message.hex
    python -m tools.reading decode [--format json|text] < message.hex

`sign` runs the meter's own code (firmware/core), under CPython or, with --micropython,
inside the real MicroPython VM, so its output is what a meter would send. `verify` and
`decode` read every message type: the meter's (1-8) with the firmware core, the fog's cooked
data (10, 11) and the dispatch chain's (12, 13) with meterledger.wire, and print the fields by
name with their units and times in UTC (docs/DATA.md): JSON for scripts (the default), or
text for people.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from hardware.firmware import module
from meterledger import errors
from meterledger import wire as P
from meterledger.infra.args import ArgumentParser
from meterledger.wire import chain as C
from meterledger.wire.decoded import BODY_NAMES  # one table of transaction body names
from meterledger.wire.names import Q_NAMES, TYPE_NAMES, named, to_json
from meterledger.wire.types import NAMES

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


def _unknown_to_core(e: Exception) -> bool:
    """The firmware core refused the message only for a type a meter never handles."""
    return getattr(e, "reason", "") == "unknown_type"


def verify(msg: bytes, pub: bytes) -> dict[str, Any]:
    """Fields of a valid message signed by pub; raises with the SPEC rejection reason."""
    keys, cose, messages = module("core.keys"), module("core.cose"), module("core.messages")
    try:
        m = cose.verify(msg, keys.VerifyingKey(pub))
    except ValueError as e:
        if not _unknown_to_core(e):
            raise
        return describe(P.verify(msg, P.PublicKey(pub)))  # types 10-13: the host's rules
    messages.check_fields(m.fields)
    return describe(m)


def decode(msg: bytes) -> dict[str, Any]:
    """Structure-checked fields of any SPEC message, signature not checked (no key)."""
    try:
        return describe(module("core.cose").parse(msg))
    except ValueError as e:
        if not _unknown_to_core(e):
            raise
        return describe(P.parse(msg))


# -- names, units and times -----------------------------------------------------------------
UNIX = "unix s"  # a time: seconds since 1970 UTC, shown in ISO 8601 UTC as well
UNITS: dict[int, dict[str, str]] = {
    P.READING: {"t": UNIX, "dur": "s", "imp": "Wh", "exp": "Wh",
                **{f"q.{k}": u for k, (_, u) in Q_NAMES.items()},
                **{f"q_names.{n}": u for n, u in Q_NAMES.values()}},
    P.BIRTH: {"dur": "s"},
    P.ACK: {"t": UNIX},
    P.COMMAND: {"not_after": UNIX},
    P.RESULT: {"t": UNIX},
    P.CHECKPOINT: {"t": UNIX, "ivl": UNIX},
    P.ENROLLMENT: {"t": UNIX},
    P.ESTIMATE: {"t": UNIX, "start": UNIX, "ivls": f"[end {UNIX}, import Wh, export Wh]"},
    P.AGGREGATE: {"ivl": UNIX, "dur": "s", "imp": "Wh", "exp": "Wh", "est_wh": "Wh",
                  "loss": "Wh", "v_min": "0.1 V", "v_max": "0.1 V"},
    C.TX: {"t": UNIX, "body.not_after": UNIX, "body.t": UNIX},
    C.BLOCK: {"t": UNIX},
}
# a command's (or an instruction's) argument 1, by op
ARG_UNITS = {"limit": "W", "interval": "s", "time": UNIX}


def utc(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _fields(m: Any) -> dict[str, Any]:
    """The payload by name, JSON-ready; a transaction's body by name, an anchor's messages
    decoded in place."""
    if m.type in TYPE_NAMES and m.type < P.ESTIMATE:
        out = named(m.fields)  # the meter's: as tools.reading always printed them
        if m.type == P.READING and P.Reading.Q in m.fields:
            out["q_names"] = {Q_NAMES[k][0]: v for k, v in m.fields[P.Reading.Q].items()
                              if k in Q_NAMES}
        return out
    names = {0: "type", 1: "dev", 17: "fog", **NAMES.get(m.type, {})}
    out = {names.get(k, str(k)): to_json(v) for k, v in m.fields.items()}
    if m.type == C.TX and isinstance(m.fields.get(4), dict):
        body_names = BODY_NAMES.get(m.fields[3], {})
        body = {body_names.get(k, str(k)): to_json(v) for k, v in m.fields[4].items()}
        if m.fields[3] == C.ANCHOR:
            for key in ("checkpoints", "aggregates"):
                if key in body:
                    body[key] = [describe(P.parse(raw, schema=False))
                                 for raw in m.fields[4][{"checkpoints": 1,
                                                         "aggregates": 3}[key]]]
        out["body"] = body
    return out


def _units(type_: int, fields: dict[str, Any]) -> dict[str, str]:
    units = {k: u for k, u in UNITS.get(type_, {}).items()
             if _get(fields, k) is not None}
    for path, op in (("args.1", fields.get("op")), ("body.args.1", _get(fields, "body.op"))):
        if op in ARG_UNITS and _get(fields, path) is not None:
            units[path] = ARG_UNITS[op]
    return units


def _get(fields: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the named fields (None if absent)."""
    v: Any = fields
    for part in path.split("."):
        if not isinstance(v, dict):
            return None
        v = v.get(part)
    return v


def describe(m: Any) -> dict[str, Any]:
    """A message as JSON: its type, signer, digest, named fields, the unit of every field
    that has one, and every time in ISO 8601 UTC (docs/DATA.md)."""
    fields = _fields(m)
    units = _units(m.type, fields)
    times: dict[str, Any] = {}
    for path, unit in units.items():
        v = _get(fields, path)
        if unit == UNIX and isinstance(v, int):
            times[path] = utc(v)
    if m.type == P.ESTIMATE and isinstance(fields.get("ivls"), list):
        times["ivls"] = [utc(i[0]) for i in fields["ivls"]]
    return {
        "type": m.type,
        "type_name": TYPE_NAMES.get(m.type, str(m.type)),
        "kid": m.kid.hex(),
        "digest": P.digest(m.raw).hex(),
        "fields": fields,
        "units": units,
        "utc": times,
    }


def _flat(prefix: str, v: Any) -> list[tuple[str, Any]]:
    if isinstance(v, dict) and "type_name" not in v:
        return [p for k, x in v.items() for p in _flat(f"{prefix}.{k}" if prefix else k, x)]
    return [(prefix, v)]


def render_text(d: dict[str, Any], indent: str = "") -> str:
    """A description (describe) for people: one line per field, with its unit and time."""
    lines = [f"{indent}type {d['type']} ({d['type_name']}), signed by {d['kid']}",
             f"{indent}digest {d['digest']}"]
    width = max((len(k) for k, _ in _flat("", d["fields"])), default=4) + 2
    for path, v in _flat("", d["fields"]):
        if path in ("flag_names",) or path.startswith("q_names"):
            continue
        if isinstance(v, list) and v and all(isinstance(x, dict) and "type_name" in x for x in v):
            lines.append(f"{indent}  {path}:")
            lines += [render_text(x, indent + "    ") for x in v]
            continue
        text = json.dumps(v) if isinstance(v, list | bool) or v is None else str(v)
        unit = d["units"].get(path)
        if path.startswith("q.") and path[2:].isdigit() and int(path[2:]) in Q_NAMES:
            path = f"q.{Q_NAMES[int(path[2:])][0]}"
        if unit and unit != UNIX and not unit.startswith("["):
            text += f" x {unit}" if unit[0].isdigit() else f" {unit}"
        when = d["utc"].get(path)
        if when is not None:
            text += f"  ({', '.join(when) if isinstance(when, list) else when})"
        elif unit and unit.startswith("["):
            text += f"  ({unit})"
        if path == "flags" and d["fields"].get("flag_names"):
            text += f"  ({', '.join(d['fields']['flag_names'])})"
        lines.append(f"{indent}  {path:<{width}}{text}")
    return "\n".join(lines)


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
    d = sub.add_parser("decode", help="decode a hex message (stdin) without a key")
    for p in (v, d):
        p.add_argument("--format", choices=("json", "text"), default="json",
                       help="json for scripts, text for people (default: json)")
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
    print(json.dumps(out, indent=2) if args.format == "json" else render_text(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
