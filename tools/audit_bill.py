"""Bill bundles: one JSON file that proves one bill (docs/PROTOCOL.md section 28) offline:
its intervals back to the meter's signed readings (and the fog's signed estimates) in an
anchored checkpoint, the tariff with the regulator's approval, the utility's receipt, and a
rerun of the bill that must give every line and the total to the cent.

    python -m tools.audit bill-bundle --fog URL --chain URL --bill BILL.json -o FILE \
        [--token-file FOG_DATA/auditor.token | --token T] [--ca-file CA.pem]
    python -m tools.audit bill FILE --trust DISPATCH_PUBHEX [--trust ...] [--format json]

`bill-bundle` asks the chain for the receipt and the tariff's two transactions, and the
meter's fog for the readings and estimates the bill names, with their proofs
(meterledger.clients.bill_bundle; the fog's auditor tier, as `bundle`).

`bill` needs no network: the bundle and the trusted dispatch-chain key(s) are enough. It
runs the checks below in order and exits 0 with the bill's lines recomputed, or 1 naming the
first check that failed; 2 is a usage or input error, and so is a file that is no bill
bundle (check `format`). Not proven here, the chain's replay and API prove them: that the
receipt is the account's latest for the period (a correction replaces it, GET
/v1/billing/receipts), that no later tariff version started within the period (the chain's
rule `tariff_not_in_force`), and that the utility billed every interval the fog measured
(the bill lists what it billed, each proven; an interval left out is the customer's gain).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meterledger import wire as P
from meterledger.clients.bill_bundle import BILL_BUNDLE_VERSION as VERSION
from meterledger.clients.bill_bundle import build_bill_bundle
from meterledger.wire import billing as BL
from tools import audit, audit_offline
from tools import audit_bill_checks as K
from tools import audit_certificate as AC
from tools import audit_trade as AT
from tools.audit import BundleFormatError
from tools.audit_bill_checks import Bill, BillVerified
from tools.audit_bill_checks import verify as run_checks

COMMANDS = ("bill-bundle", "bill")
CHECKS = K.CHECKS
# bytes: a quarter's 8,832 intervals with two readings' proofs each, and outage credits'
# baseline days
MAX_BUNDLE = 128 << 20
MAX_USAGE = BL.PERIOD_MAX_S // 60  # one-minute intervals over the longest period
ENTRY: dict[str, Any] = {"entry": "hex", "leaf_index": "uint", "inclusion_path": "path"}
SHAPE: dict[str, Any] = {
    "version": "uint", "bill": "object", "receipt": "hex", "tariff": "hex", "approval": "hex",
    "keys": "object", "transactions": "object", "fog_pub": "hex", "devices": "object",
    "anchors": "object", "readings": (ENTRY, 0, 4 * MAX_USAGE),
    "estimates": (ENTRY, 0, 2 * MAX_USAGE), "enrollment": ENTRY}
# the bill document's fields: each a kind of audit._value, or "text", "int", a special one
BILL: dict[str, str] = {
    "version": "uint", "account": "hex", "meter": "hex", "start": "uint", "end": "uint",
    "tariff": "text", "tariff_version": "uint", "lines": "lines", "total": "int",
    "held_wh": "uint", "estimated": "uint", "intervals": "uint", "usage": "usage",
    "compensation": "compensation", "points": "points"}
COMPENSATION: dict[str, str] = {
    "credit": "hex", "fault": "hex", "start": "uint", "end": "uint", "days": "uint",
    "baseline": "uint", "served": "uint", "wh": "uint", "cents": "uint", "usage": "usage"}
CREDITS_MAX = 1_000  # outage credits, and points redemptions, on one bill
REDEMPTION: dict[str, str] = {"redeem": "hex", "upt": "uint", "cents": "uint"}


def _int(at: str, v: Any) -> int:
    if v.__class__ is not int or not -(2**63) <= v < 2**63:
        raise BundleFormatError(f"{at} must be an integer in [-2^63, 2^63-1], not "
                                f"{audit._show(v)}")
    out: int = v
    return out


def _rows(at: str, v: Any, width: int, most: int) -> list[list[Any]]:
    if not isinstance(v, list) or len(v) > most or not all(
            isinstance(r, list) and len(r) == width for r in v):
        raise BundleFormatError(f"{at} must be a list of at most {most} lists of {width} "
                                f"values, not {audit._show(v)}")
    return v


def _usage(at: str, v: Any) -> None:
    for i, row in enumerate(_rows(at, v, 5, MAX_USAGE)):
        for j, n in enumerate(row):
            audit._value(f"{at}[{i}][{j}]", "uint", n)
        if row[3] > 1:
            raise BundleFormatError(f"{at}[{i}][3] (estimated) must be 0 or 1")


def _objects(at: str, v: Any, shape: dict[str, str]) -> None:
    if not isinstance(v, list) or len(v) > CREDITS_MAX:
        raise BundleFormatError(f"{at} must be a list of at most {CREDITS_MAX} objects")
    for i, c in enumerate(v):
        if not isinstance(c, dict) or set(c) != set(shape):
            raise BundleFormatError(f"{at}[{i}] must have the fields {', '.join(shape)}")
        for name, kind in shape.items():
            if kind == "usage":
                _usage(f"{at}[{i}].{name}", c[name])
            else:
                raw = audit._value(f"{at}[{i}].{name}", kind, c[name])
                if kind == "hex":
                    AC._sized(f"{at}[{i}].{name}", raw, 32)


def _field(name: str, kind: str, v: Any) -> Any:
    at = f"bill.{name}"
    if kind in ("compensation", "points"):
        _objects(at, v, COMPENSATION if kind == "compensation" else REDEMPTION)
        return v
    if kind == "text":
        if not isinstance(v, str):
            raise BundleFormatError(f"{at} must be a string, not {audit._show(v)}")
        return v
    if kind == "int":
        return _int(at, v)
    if kind == "lines":
        rows = _rows(at, v, 4, 1_000)
        for i, (what, *numbers) in enumerate(rows):
            if not isinstance(what, str):
                raise BundleFormatError(f"{at}[{i}][0] must be a string")
            for j, n in enumerate(numbers):
                _int(f"{at}[{i}][{j + 1}]", n)
        return v
    if kind == "usage":
        _usage(at, v)
        return v
    return audit._value(at, kind, v)


def _bill(doc: Any) -> dict[str, Any]:
    """The bill document, each field checked; as JSON (bytes stay hex: its digest reads
    them so)."""
    if not isinstance(doc, dict) or set(doc) != set(BILL):
        have = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise BundleFormatError(f"bill must be a bill document with the fields "
                                f"{', '.join(BILL)}, not {have}")
    for name, kind in BILL.items():
        _field(name, kind, doc[name])
    if doc["version"] != 1:
        raise BundleFormatError(f"bill.version must be 1, not {doc['version']}")
    AC._sized("bill.account", bytes.fromhex(doc["account"]), 8)
    AC._sized("bill.meter", bytes.fromhex(doc["meter"]), 8)
    return doc


def _entries(v: dict[str, Any], key: str) -> list[tuple[bytes, int, list[bytes]]]:
    return [(e[f"{key}[{i}].entry"], e[f"{key}[{i}].leaf_index"],
             e[f"{key}[{i}].inclusion_path"]) for i, e in enumerate(v[key])]


def read_bundle(doc: Any) -> Bill:
    """The bundle's fields, converted; BundleFormatError (check `format`) for input that is
    no version-1 bill bundle, naming what is wrong."""
    if not isinstance(doc, dict) or "bill" not in doc or \
            doc.get("version").__class__ is not int or doc["version"] != VERSION:
        raise BundleFormatError(f"not a version-{VERSION} bill bundle")
    v = AC._read(doc, SHAPE)
    devices = {}
    for dev, pub in v["devices"].items():
        at = f"devices[{audit._show(dev)}]"
        devices[AC._sized(at, audit._value(at, "hex", dev), 8)] = \
            AC._key(at, audit._value(at, "hex", pub))
    anchors = AT._sections(v["anchors"], audit.SHAPE["anchor"], "anchors")
    if len(devices) != 1 or len(anchors) != 1:
        raise BundleFormatError("devices must give the key of one meter, the bill's, and "
                                "anchors one anchor")
    fog_pub = AC._key("fog_pub", v["fog_pub"])
    meter = next(iter(devices))
    e = v  # a nested object's fields are read by their dotted path
    bill = Bill(
        bill=_bill(v["bill"]), receipt=AC._sized("receipt", v["receipt"], 32),
        tariff=AC._sized("tariff", v["tariff"], 32),
        approval=AC._sized("approval", v["approval"], 32), keys=AT._keys(v["keys"]),
        txs=AT._sections(v["transactions"], AT.TX_SECTION, "transactions"),
        delivery=AC.Bundle({}, fog_pub.id, meter, fog_pub, devices, anchors, []),
        readings=_entries(v, "readings"), estimates=_entries(v, "estimates"),
        enrollment=(e["enrollment.entry"], e["enrollment.leaf_index"],
                    e["enrollment.inclusion_path"]))
    for d in (bill.receipt, bill.tariff, bill.approval):
        if d not in bill.txs:
            raise BundleFormatError(f"transactions has no {d.hex()}, which the bundle names")
    return bill


def verify_bill_bundle(doc: Any, trusted: list[P.PublicKey]) -> BillVerified:
    """Every check of CHECKS in order, offline; raises BundleError naming the first that
    fails (BundleFormatError, check `format`, for input that is no bill bundle)."""
    b = read_bundle(doc)
    if not trusted:
        raise BundleFormatError("a bill bundle is checked against the dispatch key: give "
                                "--trust")
    return run_checks(b, trusted)


# --- CLI (tools.audit's subcommands) ------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    """`bill-bundle` and `bill`, on tools.audit's subcommands."""
    b = sub.add_parser("bill-bundle", help="fetch the proof bundle of one bill")
    b.add_argument("--fog", required=True, help="the API base URL of the fog node that "
                                                "measures the bill's meter")
    b.add_argument("--chain", required=True, help="the dispatch chain's API base URL")
    b.add_argument("--bill", required=True, type=Path,
                   help="the bill document (JSON) `meterledger bill run` wrote")
    b.add_argument("-o", "--output", required=True, type=Path, help="the bundle file to write")
    audit._token_flags(b)
    audit_offline.add_offline_parser(sub, "bill", "bill", "bill-bundle",
                                     "the bill's lines recomputed")


def summary(r: BillVerified) -> str:
    lines = "\n".join(f"  {what:<16} {qty:>10} x {rate:>8} = {cents / 100:>10.2f}"
                      for what, qty, rate, cents in r.lines)
    return "\n".join((
        f"verified: the bill of account {r.account} (meter {r.meter}) from {r.start} to "
        f"{r.end} under tariff {r.tariff!r} version {r.version} (utility {r.utility}, "
        f"approved by {r.regulator}): {r.total / 100:.2f}",
        lines,
        f"{r.intervals} intervals from {r.readings} signed readings of the meter and "
        f"{r.estimated} estimated by fog {r.fog}; {r.held_wh} Wh held; receipt {r.receipt} "
        f"in blocks {r.blocks[0]}-{r.blocks[1]} sealed by {', '.join(r.sealers)}"))


def _load_bill(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
        return _bill(doc)
    except (OSError, ValueError) as e:  # JSONDecodeError and BundleFormatError too
        print(f"error: {path}: {e}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """`bill-bundle` (0, 1 if a service refused, 2 on bad input) or `bill` (0 verified, 1
    rejected naming the check, 2 input that is no bill bundle)."""
    if args.cmd == "bill-bundle":
        bill = _load_bill(args.bill)
        if bill is None:
            return 2
        return audit.fetch(args, lambda fog, chain: build_bill_bundle(fog, chain, bill),
                           f"bundle of the bill of {bill['account']} from {bill['start']}")
    return audit_offline.check_offline(args, verify_bill_bundle, MAX_BUNDLE, CHECKS, summary)
