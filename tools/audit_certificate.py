"""Certificate bundles: one JSON file that proves one green certificate (docs/PROTOCOL.md
section 25), from its generator meter's signed readings to the dispatch chain.

    python -m tools.audit certificate-bundle --fog URL --chain URL --certificate ID -o FILE \
        [--token-file FOG_DATA/auditor.token | --token T] [--ca-file CA.pem]
    python -m tools.audit certificate FILE --trust DISPATCH_PUBHEX [--trust ...] [--format json]

`certificate-bundle` asks the chain for the certificate and the statements it came from,
and the generator's fog for the readings those statements name, with their proofs
(meterledger.clients.certificate_bundle; the fog's auditor tier, as `bundle`).

`certificate` needs no network: the bundle and the trusted dispatch-chain key(s) are enough.
It runs the checks below in order (each over every anchor, statement or reading before the
next) and exits 0 with a short summary, or 1 naming the first check that failed; 2 is a
usage or input error, and so is a file that is no certificate bundle (check `format`), with
one line naming what is wrong. Not proven here: where the certificate's range starts (lo
counts every earlier certified Wh of the generator: the chain's replay, `meterledger chain
verify-chain`, proves it), and the generator record (its meter and fog, owner, eligibility),
which is the chain API's answer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from meterledger import wire as P
from meterledger.clients.certificate_bundle import CERTIFICATE_BUNDLE_VERSION as VERSION
from meterledger.clients.certificate_bundle import build_certificate_bundle
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import merkle
from tools import audit, audit_offline
from tools.audit import BundleError, BundleFormatError, _check, _parsed, _proof, _signed

COMMANDS = ("certificate-bundle", "certificate")
# (check name, what it establishes), in the order `certificate` runs them
CHECKS = (
    ("format", "the bundle has every field and no other, of the right kind and size (a "
               "failure is an input error: exit 2)"),
    ("certificate", "the certificate's id is <generator>/<lo>-<hi> of its record, and its "
                    "generator is measured by the fog of fog_pub"),
    ("block_signature", "every block header is a type-13 message signed by a trusted key"),
    ("block_height", "every block header has its anchor section's height"),
    ("anchor_signature", "every anchor is a type-12 anchor transaction signed by fog_pub, "
                         "with the digest the segments name it by"),
    ("chain_id", "every anchor names the chain of its block"),
    ("tx_inclusion", "every anchor is transaction tx_index of its sealed block"),
    ("statement_anchored", "each statement is byte-equal to an item its anchor carries "
                           "(body key 4)"),
    ("statement_signature", "each statement is a type-14 message signed by fog_pub, of the "
                            "generator's meter"),
    ("tiling", "the segments are ascending and contiguous, each as long as its statement's "
               "export, no meter interval twice, and together cover [lo, hi) exactly (the "
               "first holds lo and first_ivl, the last hi - 1 and last_ivl)"),
    ("measured", "no statement is estimated (est = 0): the chain certifies none"),
    ("checkpoint_signature", "each anchor's newest checkpoint is a type-6 message signed by "
                             "fog_pub"),
    ("device_id", "each reading is from its statement's meter, whose key the bundle gives"),
    ("reading_signature", "each reading is a type-1 message signed by its meter's key"),
    ("reading_inclusion", "each reading is the entry its statement names (entries[i]) in the "
                          "tree of its anchor's newest checkpoint"),
    ("enrollment", "a type-8 decision signed by the fog enrolled the meter and key as active"),
    ("enrollment_order", "that decision precedes the statement's first reading in the log"),
    ("enrollment_inclusion", "the decision is in the same tree"),
    ("consecutive", "a statement's readings are its meter's consecutive readings (seq + 1 "
                    "each, each later), the first at ivl - dur, the last at ivl"),
    ("energy", "the register differences of the first and the last reading are the "
               "statement's imp and exp (no register reset, no register going back)"),
)
MAX_BUNDLE = 256 << 20  # bytes: 20,000 statements (the chain's most per certificate) fit
MAX_SEGMENTS = 20_000  # aggregator.chain.service.api_green.STATEMENTS
READING: dict[str, Any] = {"entry": "hex", "inclusion_path": "path"}
# a value (shape, most) is a list of 1 to `most` objects of that shape
SEGMENT: dict[str, Any] = {"lo": "uint", "hi": "uint", "statement": "hex", "anchor": "hex",
                           "readings": (READING, P.MAX_STATEMENT_ENTRIES),
                           "enrollment": audit.SHAPE["enrollment"]}
SHAPE: dict[str, Any] = {"version": "uint", "certificate": "object", "generator": "object",
                         "fog_pub": "hex", "devices": "object", "anchors": "object",
                         "segments": (SEGMENT, MAX_SEGMENTS)}
# the fields of the chain's records the checks use (the records hold more)
CERTIFICATE: dict[str, Any] = {"id": "text", "generator": "text", "lo": "uint", "hi": "uint",
                               "first_ivl": "uint", "last_ivl": "uint"}
GENERATOR: dict[str, Any] = {"fog": "hex", "meter": "hex"}


@dataclass(frozen=True)
class CertificateVerified:
    certificate: str
    generator: str
    wh: int
    meter: str
    fog: str
    statements: int
    readings: int
    first_ivl: int  # the earliest and the latest interval of its statements
    last_ivl: int
    anchors: int
    blocks: tuple[int, int]  # the lowest and the highest block height
    sealers: list[str]


# --- format ---------------------------------------------------------------------------------
def _read(doc: Any, shape: dict[str, Any], at: str = "") -> dict[str, Any]:
    """audit.read_fields, where a shape value (inner, most) is a list of 1 to `most` objects
    of shape `inner` ((inner, least, most): `least` to `most`): the list of their fields,
    each read under at + key[i]."""
    lists = {k: s for k, s in shape.items() if isinstance(s, tuple)}
    plain = {k: s for k, s in shape.items() if k not in lists}
    if not isinstance(doc, dict):
        return audit.read_fields(doc, plain, at)  # says it is no object
    for key in doc:
        if key not in shape:
            raise BundleFormatError(f"{at}{audit._show(key)}: unknown key in "
                                    f"{at.rstrip('.') or 'the bundle'} (it has "
                                    f"{', '.join(shape)})")
    out = audit.read_fields({k: v for k, v in doc.items() if k not in lists}, plain, at)
    for key, (inner, *sizes) in lists.items():
        least, most = (1, *sizes) if len(sizes) == 1 else sizes
        items = doc.get(key)
        if not isinstance(items, list) or not least <= len(items) <= most:
            raise BundleFormatError(f"{at}{key} must be a list of {least} to {most} objects, "
                                    f"not {audit._show(items)}")
        out[at + key] = [_read(x, inner, f"{at}{key}[{i}].") for i, x in enumerate(items)]
    return out


def _record(doc: Any, at: str, shape: dict[str, Any]) -> dict[str, Any]:
    """The fields `shape` names of one of the chain's records (which may hold others)."""
    if not isinstance(doc, dict):
        raise BundleFormatError(f"{at} must be a JSON object, not {type(doc).__name__}")
    out = {}
    for key, kind in shape.items():
        if key not in doc:
            raise BundleFormatError(f"missing {at}.{key}")
        if kind == "text" and not isinstance(doc[key], str):
            raise BundleFormatError(f"{at}.{key} must be a string, not {audit._show(doc[key])}")
        out[key] = doc[key] if kind == "text" else audit._value(f"{at}.{key}", kind, doc[key])
    return out


def _sized(at: str, raw: bytes, n: int) -> bytes:
    if len(raw) != n:
        raise BundleFormatError(f"{at} must be {n} bytes ({2 * n} hex characters)")
    return raw


def _key(at: str, raw: bytes) -> P.PublicKey:
    try:
        return P.PublicKey(raw)
    except P.ProtocolError as e:
        raise BundleFormatError(f"{at} is not a P-256 point: {e}") from None


@dataclass
class Segment:
    """One segment of a bundle as read, and what the checks found of it."""

    at: str  # "segments[i]", naming it in a failure
    lo: int
    hi: int
    statement: bytes
    anchor: bytes  # its digest
    readings: list[tuple[bytes, list[bytes]]]  # (entry, inclusion path)
    enrollment: tuple[bytes, int, list[bytes]]  # (entry, leaf index, inclusion path)
    f: P.Fields = field(default_factory=dict)  # the statement, once its signature holds
    rf: list[P.Fields] = field(default_factory=list)  # the readings, likewise


@dataclass
class Bundle:
    cert: dict[str, Any]
    gen_fog: bytes
    gen_meter: bytes
    fog_pub: P.PublicKey
    devices: dict[bytes, P.PublicKey]
    anchors: dict[bytes, tuple[str, dict[str, Any]]]  # digest -> (its path, its fields)
    segments: list[Segment]
    tx: dict[bytes, P.Fields] = field(default_factory=dict)  # digest -> the anchor's fields
    cp: dict[bytes, P.Fields] = field(default_factory=dict)  # digest -> its newest checkpoint


def _segment(i: int, s: dict[str, Any], anchors: dict[bytes, Any]) -> Segment:
    at = f"segments[{i}]."
    anchor = _sized(at + "anchor", s[at + "anchor"], 32)
    if anchor not in anchors:
        raise BundleFormatError(f"{at}anchor names no anchor of the bundle")
    return Segment(at[:-1], s[at + "lo"], s[at + "hi"], s[at + "statement"], anchor,
                   [(r[f"{at}readings[{j}].entry"], r[f"{at}readings[{j}].inclusion_path"])
                    for j, r in enumerate(s[at + "readings"])],
                   (s[at + "enrollment.entry"], s[at + "enrollment.leaf_index"],
                    s[at + "enrollment.inclusion_path"]))


def read_bundle(doc: Any) -> Bundle:
    """The bundle's fields, converted; BundleFormatError (check `format`) for input that is
    no version-1 certificate bundle, naming what is wrong."""
    if isinstance(doc, dict) and "reading" in doc:
        raise BundleFormatError("this is a reading's proof bundle: check it with `verify`")
    if not isinstance(doc, dict) or doc.get("version").__class__ is not int or \
            doc["version"] != VERSION:
        raise BundleFormatError(f"not a version-{VERSION} certificate bundle")
    v = _read(doc, SHAPE)
    devices = {}
    for dev, pub in v["devices"].items():
        at = f"devices[{audit._show(dev)}]"
        meter = _sized(at, audit._value(at, "hex", dev), 8)
        devices[meter] = _key(at, audit._value(at, "hex", pub))
    anchors = {}
    for d, a in v["anchors"].items():
        at = f"anchors[{audit._show(d)}]"
        digest = _sized(at, audit._value(at, "hex", d), 32)
        anchors[digest] = (f"anchors.{d}.", _read(a, audit.SHAPE["anchor"], f"anchors.{d}."))
    segments = [_segment(i, s, anchors) for i, s in enumerate(v["segments"])]
    unused = anchors.keys() - {s.anchor for s in segments}
    if unused:
        raise BundleFormatError(f"anchor {min(unused).hex()} is no segment's")
    gen = _record(doc["generator"], "generator", GENERATOR)
    return Bundle(_record(doc["certificate"], "certificate", CERTIFICATE),
                  _sized("generator.fog", gen["fog"], 8),
                  _sized("generator.meter", gen["meter"], 8),
                  _key("fog_pub", v["fog_pub"]), devices, anchors, segments)


# --- the checks -------------------------------------------------------------------------------
@contextmanager
def _within(what: str) -> Iterator[None]:
    """A failed check names `what` it failed for (an anchor, a segment)."""
    try:
        yield
    except BundleFormatError:
        raise
    except BundleError as e:
        raise BundleError(e.check, f"{what}: {e.detail}") from None


def _certificate(b: Bundle) -> tuple[str, int, int]:
    c = b.cert
    try:
        gid, lo, hi = GC.parse_certificate_id(c["id"])
    except P.ProtocolError as e:
        raise BundleError("certificate", str(e)) from None
    _check("certificate", (gid, lo, hi) == (c["generator"], c["lo"], c["hi"]),
           f"the id {c['id']} is not the record's: generator {c['generator']}, "
           f"[{c['lo']}, {c['hi']})")
    _check("certificate", b.gen_fog == b.fog_pub.id,
           f"generator {gid} is measured by fog {b.gen_fog.hex()}, fog_pub is "
           f"{b.fog_pub.id_hex}")
    return gid, lo, hi


def _anchor_tx(b: Bundle, digest: bytes, raw: bytes) -> P.Fields:
    tf = _signed("anchor_signature", raw, b.fog_pub, C.TX)
    _check("anchor_signature", tf[3] == C.ANCHOR, f"transaction kind is {tf[3]!r}")
    _check("anchor_signature", P.digest(raw) == digest,
           f"the transaction's digest is {P.digest(raw).hex()}")
    return tf


def _anchors(b: Bundle, trusted: list[P.PublicKey]) -> list[tuple[P.Fields, str]]:
    """block_signature .. tx_inclusion, each over every anchor: the headers and sealers."""
    headers = {}
    for d, (at, v) in b.anchors.items():
        with _within(f"anchor {d.hex()}"):
            headers[d] = audit.verify_header(v, at, trusted)
    for d, (at, v) in b.anchors.items():
        with _within(f"anchor {d.hex()}"):
            b.tx[d] = _anchor_tx(b, d, v[at + "transaction"])
    for d, (at, v) in b.anchors.items():
        with _within(f"anchor {d.hex()}"):
            audit.verify_in_block(v, at, v[at + "transaction"], b.tx[d][6], headers[d][0])
    return list(headers.values())


def _anchored(b: Bundle, s: Segment) -> None:
    _check("statement_anchored", s.statement in b.tx[s.anchor][4].get(4, []),
           f"anchor {s.anchor.hex()} carries no such statement")


def _statement_signature(b: Bundle, s: Segment) -> None:
    s.f = _signed("statement_signature", s.statement, b.fog_pub, P.STATEMENT)
    _check("statement_signature", s.f[1] == b.gen_meter,
           f"the statement is of meter {s.f[1].hex()}, the generator's meter is "
           f"{b.gen_meter.hex()}")


def _tiling(b: Bundle, lo: int, hi: int) -> None:
    segs, seen = b.segments, set()
    for k, s in enumerate(segs):
        with _within(s.at):
            _check("tiling", s.lo < s.hi and s.hi - s.lo == s.f[5],
                   f"[{s.lo}, {s.hi}) but its statement exports {s.f[5]} Wh")
            _check("tiling", k == 0 or s.lo == segs[k - 1].hi,
                   f"starts at {s.lo}, not where the segment before it ends "
                   f"({segs[k - 1].hi})")
            _check("tiling", (s.f[1], s.f[2]) not in seen,
                   f"meter {s.f[1].hex()} interval {s.f[2]} is stated before")
            seen.add((s.f[1], s.f[2]))
    first, last = segs[0], segs[-1]
    _check("tiling", first.lo <= lo < first.hi, f"the first segment [{first.lo}, {first.hi}) "
                                                f"does not hold the certificate's first Wh {lo}")
    _check("tiling", last.lo < hi <= last.hi, f"the last segment [{last.lo}, {last.hi}) does "
                                              f"not hold the certificate's last Wh {hi - 1}")
    _check("tiling", (first.f[2], last.f[2]) == (b.cert["first_ivl"], b.cert["last_ivl"]),
           f"the statements holding its first and last Wh are of intervals {first.f[2]} and "
           f"{last.f[2]}, the certificate says {b.cert['first_ivl']} and "
           f"{b.cert['last_ivl']}")


def _measured(b: Bundle, s: Segment) -> None:
    _check("measured", s.f[6] == 0, f"the statement of meter {s.f[1].hex()} interval "
                                    f"{s.f[2]} is estimated: the chain certifies no estimate")


def _checkpoints(b: Bundle) -> None:
    for d, tf in b.tx.items():
        cps = tf[4][1]
        with _within(f"anchor {d.hex()}"):
            _check("checkpoint_signature", bool(cps) and isinstance(cps[-1], bytes),
                   "the anchor carries no checkpoint")
            b.cp[d] = _signed("checkpoint_signature", cps[-1], b.fog_pub, P.CHECKPOINT)


def _device_key(b: Bundle, s: Segment) -> P.PublicKey:
    key = b.devices.get(s.f[1])
    _check("device_id", key is not None, f"the bundle gives no key of meter {s.f[1].hex()}")
    assert key is not None
    _check("device_id", key.id == s.f[1], f"the key given for meter {s.f[1].hex()} is meter "
                                           f"{key.id_hex}'s")
    return key


def _device_id(b: Bundle, s: Segment) -> None:
    _device_key(b, s)
    for j, (raw, _) in enumerate(s.readings):
        kid = _parsed("reading_signature", raw).kid
        _check("device_id", kid == s.f[1],
               f"reading {j} is from meter {kid.hex()}, the statement's is {s.f[1].hex()}")


def _reading_signature(b: Bundle, s: Segment) -> None:
    key = _device_key(b, s)
    s.rf = [_signed("reading_signature", raw, key, P.READING) for raw, _ in s.readings]


def _included(check: str, raw: bytes, index: int, path: list[bytes], cf: P.Fields) -> None:
    """`raw` is entry `index` of the tree of the checkpoint whose fields are `cf`."""
    _proof(check, lambda: merkle.verify_inclusion(merkle.leaf_hash(raw), index, cf[3], path,
                                                  cf[4]))


def _reading_inclusion(b: Bundle, s: Segment) -> None:
    entries = s.f[7]
    _check("reading_inclusion", len(s.readings) == len(entries),
           f"the statement names {len(entries)} entries, the bundle gives "
           f"{len(s.readings)} readings")
    for (raw, path), index in zip(s.readings, entries, strict=True):
        _included("reading_inclusion", raw, index, path, b.cp[s.anchor])


def _enrollment(b: Bundle, s: Segment) -> None:
    key = _device_key(b, s)
    ef = _signed("enrollment", s.enrollment[0], b.fog_pub, P.ENROLLMENT)
    _check("enrollment", ef[1] == key.id and ef[10] == key.raw,
           "the decision names another meter or key")
    _check("enrollment", ef[18] == "active", f"the decision says {ef[18]!r}, not 'active'")


def _enrollment_order(b: Bundle, s: Segment) -> None:
    _check("enrollment_order", s.enrollment[1] < min(s.f[7]),
           f"enrollment is entry {s.enrollment[1]}, the first reading entry {min(s.f[7])}")


def _enrollment_inclusion(b: Bundle, s: Segment) -> None:
    entry, index, path = s.enrollment
    _included("enrollment_inclusion", entry, index, path, b.cp[s.anchor])


def _by_seq(s: Segment) -> list[P.Fields]:
    return sorted(s.rf, key=lambda r: int(r[2]))


def _consecutive(b: Bundle, s: Segment) -> None:
    rs, ivl, dur = _by_seq(s), s.f[2], s.f[3]
    for a, c in pairwise(rs):
        _check("consecutive", c[2] == a[2] + 1 and c[3] > a[3],
               f"readings seq {a[2]} (t {a[3]}) and seq {c[2]} (t {c[3]}) do not follow "
               "each other")
    _check("consecutive", (rs[0][3], rs[-1][3]) == (ivl - dur, ivl),
           f"the readings run from t {rs[0][3]} to t {rs[-1][3]}, the interval from "
           f"{ivl - dur} to {ivl}")


def _energy(b: Bundle, s: Segment) -> None:
    rs = _by_seq(s)
    for a, c in pairwise(rs):
        _check("energy", not c[7] & P.REGISTER_RESET,
               f"reading seq {c[2]} says the meter's registers were reset")
        _check("energy", c[5] >= a[5] and c[6] >= a[6],
               f"a register goes back from seq {a[2]} to seq {c[2]}")
    imp, exp = rs[-1][5] - rs[0][5], rs[-1][6] - rs[0][6]
    _check("energy", (imp, exp) == (s.f[4], s.f[5]),
           f"the registers give import {imp} Wh and export {exp} Wh, the statement of "
           f"interval {s.f[2]} says {s.f[4]} and {s.f[5]}")


def _each(b: Bundle, *checks: Callable[[Bundle, Segment], None]) -> None:
    """Each check over every segment before the next check."""
    for check in checks:
        for s in b.segments:
            with _within(s.at):
                check(b, s)


def verify_certificate_bundle(doc: Any, trusted: list[P.PublicKey]) -> CertificateVerified:
    """Every check of CHECKS in order, offline; raises BundleError naming the first that
    fails (BundleFormatError, check `format`, for input that is no certificate bundle)."""
    b = read_bundle(doc)
    if not trusted:
        raise BundleFormatError("a certificate bundle is checked against the dispatch key: "
                                "give --trust")
    gid, lo, hi = _certificate(b)
    headers = _anchors(b, trusted)
    _each(b, _anchored, _statement_signature)
    _tiling(b, lo, hi)
    _each(b, _measured)
    _checkpoints(b)
    _each(b, _device_id, _reading_signature, _reading_inclusion, _enrollment,
          _enrollment_order, _enrollment_inclusion, _consecutive, _energy)
    heights = [hf[2] for hf, _ in headers]
    ivls = [s.f[2] for s in b.segments]
    return CertificateVerified(
        b.cert["id"], gid, hi - lo, b.gen_meter.hex(), b.fog_pub.id_hex, len(b.segments),
        sum(len(s.readings) for s in b.segments), min(ivls), max(ivls), len(b.anchors),
        (min(heights), max(heights)), sorted({sealer for _, sealer in headers}))


# --- CLI (tools.audit's subcommands) ------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    """`certificate-bundle` and `certificate`, on tools.audit's subcommands."""
    b = sub.add_parser("certificate-bundle", help="fetch the proof bundle of one green "
                                                  "certificate")
    b.add_argument("--fog", required=True, help="the API base URL of the fog node that "
                                                "measures the certificate's generator")
    b.add_argument("--chain", required=True, help="the dispatch chain's API base URL")
    b.add_argument("--certificate", required=True, metavar="ID",
                   help="the certificate's id, <generator>/<lo>-<hi>")
    b.add_argument("-o", "--output", required=True, type=Path, help="the bundle file to write")
    audit._token_flags(b)
    audit_offline.add_offline_parser(sub, "certificate", "certificate", "certificate-bundle", "one line")


def _summary(r: CertificateVerified) -> str:
    blocks = f"block {r.blocks[0]}" if r.blocks[0] == r.blocks[1] else \
        f"blocks {r.blocks[0]}-{r.blocks[1]}"
    return (f"verified: certificate {r.certificate} ({r.wh} Wh of generator {r.generator}) "
            f"came from {r.statements} measured statements of meter {r.meter} by fog {r.fog} "
            f"(intervals ending {audit._utc(r.first_ivl)} to {audit._utc(r.last_ivl)}), "
            f"whose {r.readings} readings the meter signed and the fog's log holds, carried "
            f"by {r.anchors} anchors in {blocks} sealed by {', '.join(r.sealers)}")


def run(args: argparse.Namespace) -> int:
    """`certificate-bundle` (0, 1 if a service refused, 2 on bad input) or `certificate`
    (0 verified, 1 rejected naming the check, 2 input that is no certificate bundle)."""
    if args.cmd == "certificate-bundle":
        try:
            GC.parse_certificate_id(args.certificate)
        except P.ProtocolError as e:
            print(f"error: --certificate: {e}", file=sys.stderr)
            return 2
        return audit.fetch(args, lambda fog, chain: build_certificate_bundle(
            fog, chain, args.certificate), f"bundle of certificate {args.certificate}")
    return audit_offline.check_offline(args, verify_certificate_bundle, MAX_BUNDLE, CHECKS, _summary)
