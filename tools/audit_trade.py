"""Trade bundles: one JSON file that proves one settled market contract (docs/PROTOCOL.md
section 27), from the two orders through the match, the three signatures and the seller's
measured delivery, back to its meter's signed readings, to the settlement.

    python -m tools.audit trade-bundle --fog URL --chain URL --cycle C --contract N -o FILE \
        [--token-file FOG_DATA/auditor.token | --token T] [--ca-file CA.pem]
    python -m tools.audit trade FILE --trust DISPATCH_PUBHEX [--trust ...] [--format json]

`trade-bundle` asks the chain for the contract and every transaction it names, and the
seller's fog for the readings its delivery statements name (meterledger.clients.trade_bundle;
the fog's auditor tier, as `bundle`).

`trade` needs no network: the bundle and the trusted dispatch-chain key(s) are enough. It
runs the checks below in order and exits 0 with a summary of the trade (the price and every
payment recomputed), or 1 naming the first check that failed; 2 is a usage or input error,
and so is a file that is no trade bundle (check `format`). A rule's clock is the time of the
block before a transaction's own (docs/PROTOCOL.md, the chain's time), so every transaction
comes with that header. Not proven here, the chain's replay proves them (`meterledger chain
verify-chain`): that the parameters and the enrolment named were the latest ones, the
seller's earlier contracts of the cycle (which took its export first), and where the
congestion fee came from (it is the record's, within the buyer's fee_max).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from meterledger import wire as P
from meterledger.clients.trade_bundle import TRADE_BUNDLE_VERSION as VERSION
from meterledger.clients.trade_bundle import build_trade_bundle
from meterledger.wire.schema import TIME_MAX
from tools import audit, audit_offline
from tools import audit_certificate as AC
from tools import audit_trade_checks as K
from tools.audit import BundleFormatError
from tools.audit_trade_checks import Trade, TradeVerified

COMMANDS = ("trade-bundle", "trade")
CHECKS = K.CHECKS
MAX_BUNDLE = 64 << 20  # bytes: a cycle's statements (one a minute: 1,440 a day) fit
MAX_STATEMENTS = 1_440
TX_SECTION: dict[str, Any] = {**audit.SHAPE["anchor"], "prev_header": "hex"}
STATEMENT: dict[str, Any] = {"statement": "hex", "anchor": "hex",
                             "readings": (AC.READING, 0, P.MAX_STATEMENT_ENTRIES),
                             "enrollment": audit.SHAPE["enrollment"]}
EARLIER: dict[str, Any] = {"n": "uint", "wh": "uint", "delivered": "uint"}
SHAPE: dict[str, Any] = {"version": "uint", "contract": "object", "enrolment": "hex",
                         "keys": "object", "transactions": "object", "fog_pub": "hex",
                         "devices": "object", "anchors": "object",
                         "statements": (STATEMENT, 0, MAX_STATEMENTS),
                         "earlier": (EARLIER, 0, 10_000)}
# the fields of the contract record the checks use (the record holds more)
CONTRACT: dict[str, Any] = {
    "cycle": "uint", "n": "uint", "buyer": "hex", "seller": "hex", "wh": "uint",
    "bid": "uint", "ask": "uint", "mid": "uint", "pt": "uint", "fee": "uint", "pf": "uint",
    "escrow": "uint", "state": "text", "tx": "hex", "orders": "path", "signs": "path",
    "params": "hex", "settled": "hex", "settle_params": "hex", "delivered": "uint",
    "measured": "uint"}


def _keys(doc: Any) -> dict[bytes, P.PublicKey]:
    out = {}
    for pid, pub in doc.items():
        at = f"keys[{audit._show(pid)}]"
        key = AC._key(at, audit._value(at, "hex", pub))
        if AC._sized(at, audit._value(at, "hex", pid), 8) != key.id:
            raise BundleFormatError(f"{at} is the key of {key.id_hex}")
        out[key.id] = key
    return out


def _sections(doc: Any, shape: dict[str, Any], what: str) -> dict[bytes,
                                                                    tuple[str, dict[str, Any]]]:
    out = {}
    for d, a in doc.items():
        at = f"{what}[{audit._show(d)}]"
        digest = AC._sized(at, audit._value(at, "hex", d), 32)
        out[digest] = (f"{what}.{d}.", AC._read(a, shape, f"{what}.{d}."))
    return out


def _statement(i: int, s: dict[str, Any], anchors: dict[bytes, Any]) -> AC.Segment:
    at = f"statements[{i}]."
    anchor = AC._sized(at + "anchor", s[at + "anchor"], 32)
    if anchor not in anchors:
        raise BundleFormatError(f"{at}anchor names no anchor of the bundle")
    return AC.Segment(at[:-1], 0, 0, s[at + "statement"], anchor,
                      [(r[f"{at}readings[{j}].entry"], r[f"{at}readings[{j}].inclusion_path"])
                       for j, r in enumerate(s[at + "readings"])],
                      (s[at + "enrollment.entry"], s[at + "enrollment.leaf_index"],
                       s[at + "enrollment.inclusion_path"]))


def _contract(doc: Any) -> tuple[dict[str, Any], list[bytes]]:
    c = AC._record(doc, "contract", CONTRACT)
    for name in ("buyer", "seller"):
        AC._sized(f"contract.{name}", c[name], 8)
    for name in ("tx", "params", "settled", "settle_params"):
        AC._sized(f"contract.{name}", c[name], 32)
    commits = [] if "commits" not in doc else audit._value("contract.commits", "path",
                                                            doc["commits"])
    c["green"] = audit._value("contract.green", "uint", doc.get("green", 0))
    for name in ("green_short", "clean_upt"):  # a green contract's, once settled
        c[name] = audit._value(f"contract.{name}", "uint", doc.get(name, 0))
    if len(c["orders"]) != 2 or len(commits) not in (0, 2):
        raise BundleFormatError("contract.orders must name 2 orders and contract.commits "
                                "none or 2 commitments")
    return c, commits


def read_bundle(doc: Any) -> Trade:
    """The bundle's fields, converted; BundleFormatError (check `format`) for input that is
    no version-1 trade bundle, naming what is wrong."""
    if not isinstance(doc, dict) or "contract" not in doc or \
            doc.get("version").__class__ is not int or doc["version"] != VERSION:
        raise BundleFormatError(f"not a version-{VERSION} trade bundle")
    v = AC._read(doc, SHAPE)
    c, commits = _contract(doc["contract"])
    devices = {}
    for dev, pub in v["devices"].items():
        at = f"devices[{audit._show(dev)}]"
        devices[AC._sized(at, audit._value(at, "hex", dev), 8)] = \
            AC._key(at, audit._value(at, "hex", pub))
    if len(devices) != 1:
        raise BundleFormatError("devices must give the key of one meter, the seller's")
    anchors = _sections(v["anchors"], audit.SHAPE["anchor"], "anchors")
    segments = [_statement(i, s, anchors) for i, s in enumerate(v["statements"])]
    unused = anchors.keys() - {s.anchor for s in segments}
    if unused:
        raise BundleFormatError(f"anchor {min(unused).hex()} carries no statement of the "
                                "bundle")
    fog_pub = AC._key("fog_pub", v["fog_pub"])
    meter = next(iter(devices))
    delivery = AC.Bundle({}, fog_pub.id, meter, fog_pub, devices, anchors, segments)
    earlier = [{k.rsplit(".", 1)[1]: x for k, x in e.items()} for e in v["earlier"]]
    numbers = [e["n"] for e in earlier]
    if len(set(numbers)) != len(numbers) or any(
            e["n"] >= c["n"] or e["delivered"] > e["wh"] for e in earlier):
        raise BundleFormatError("earlier must list distinct contracts numbered below the "
                                "contract's, none delivered more than its Wh")
    return Trade(c=c, commits=commits, enrolment=AC._sized("enrolment", v["enrolment"], 32),
                 keys=_keys(v["keys"]),
                 txs=_sections(v["transactions"], TX_SECTION, "transactions"),
                 earlier=earlier, delivery=delivery)


def verify_trade_bundle(doc: Any, trusted: list[P.PublicKey]) -> TradeVerified:
    """Every check of CHECKS in order, offline; raises BundleError naming the first that
    fails (BundleFormatError, check `format`, for input that is no trade bundle)."""
    t = read_bundle(doc)
    if not trusted:
        raise BundleFormatError("a trade bundle is checked against the dispatch key: give "
                                "--trust")
    return K.verify(t, trusted)


# --- CLI (tools.audit's subcommands) ------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    """`trade-bundle` and `trade`, on tools.audit's subcommands."""
    b = sub.add_parser("trade-bundle", help="fetch the proof bundle of one settled market "
                                            "contract")
    b.add_argument("--fog", required=True, help="the API base URL of the fog node that "
                                                "measures the contract's seller")
    b.add_argument("--chain", required=True, help="the dispatch chain's API base URL")
    b.add_argument("--cycle", required=True, type=int, metavar="C",
                   help="the contract's cycle (its delivery interval's start, unix s)")
    b.add_argument("--contract", required=True, type=int, metavar="N",
                   help="the contract's number within the cycle")
    b.add_argument("-o", "--output", required=True, type=Path, help="the bundle file to write")
    audit._token_flags(b)
    audit_offline.add_offline_parser(sub, "trade", "trade", "trade-bundle", "a few lines")


def summary(r: TradeVerified) -> str:
    p, pay = r.price, r.payments
    blocks = f"blocks {r.blocks[0]}-{r.blocks[1]}"
    measured = (f"measured in {r.statements} statements of meter {r.meter} by fog {r.fog} "
                f"({r.readings} signed readings, {r.estimated} statements estimated)"
                if r.measured else "unmeasured: no statements by the deadline")
    return "\n".join((
        f"verified: contract {r.contract}: {r.buyer} bought {r.wh} Wh from {r.seller} at "
        f"P_F {p['pf']} mpt/kWh = P_T {p['pt']} + midpoint {p['mid']} (bid {p['bid']}, ask "
        f"{p['ask']}) + congestion {p['fee']}, signed by buyer, seller and grid operator "
        f"{r.operator} before delivery",
        f"delivered {r.delivered} Wh, {measured}",
        f"settled: seller +{pay['seller']} upt, grid operator +{pay['grid']} upt, buyer "
        f"refunded {pay['buyer_refund']} upt, imbalance {pay['imbalance']} upt; in {blocks} "
        f"sealed by {', '.join(r.sealers)}"))


def run(args: argparse.Namespace) -> int:
    """`trade-bundle` (0, 1 if a service refused, 2 on bad input) or `trade` (0 verified,
    1 rejected naming the check, 2 input that is no trade bundle)."""
    if args.cmd == "trade-bundle":
        if not (0 <= args.cycle <= TIME_MAX and 0 <= args.contract <= 10_000):
            print(f"error: --cycle must be in [0, {TIME_MAX}] and --contract in "
                  "[0, 10000]", file=sys.stderr)
            return 2
        return audit.fetch(args, lambda fog, chain: build_trade_bundle(
            fog, chain, args.cycle, args.contract),
            f"bundle of contract {args.cycle}/{args.contract}")
    return audit_offline.check_offline(args, verify_trade_bundle, MAX_BUNDLE, CHECKS, summary)
