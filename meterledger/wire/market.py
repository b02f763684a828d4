"""Peer-to-peer market and grid-access kinds of the type-12 transaction (docs/PROTOCOL.md
section 27): their body schemas, ranges, body rules and parameters, merged into
`meterledger.wire.chain`'s tables. Pure.

Units, everywhere: energy in Wh, prices in milli-points per kWh (mpt/kWh), and so amounts
in micro-points (upt): price x Wh is exact, no rounding anywhere in a payment. Electricity
points are not a currency (001 s2.3): they are granted at enrolment, transferred, held in
escrow and redeemed against bills.

A trading cycle is one delivery interval [c, c + cycle_s) named by its start c (a multiple
of cycle_s); its gate closes gate_s before c.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire import certificates as GC
from meterledger.wire.cbor import encode
from meterledger.wire.schema import TIME_MAX, Range

MK_ENROLL, MK_ACCESS, MK_TRANSFER, MK_NETWORK = "mk_enroll", "mk_access", "mk_transfer", "mk_network"
MK_ORDER, MK_CANCEL, MK_COMMIT, MK_REVEAL = "mk_order", "mk_cancel", "mk_commit", "mk_reveal"
MK_CLEAR, MK_SIGN, MK_SETTLE, MK_REVIEW = "mk_clear", "mk_sign", "mk_settle", "mk_review"
KINDS = (MK_ENROLL, MK_ACCESS, MK_TRANSFER, MK_NETWORK, MK_ORDER, MK_CANCEL, MK_COMMIT,
         MK_REVEAL, MK_CLEAR, MK_SIGN, MK_SETTLE, MK_REVIEW)

BUY, SELL = "buy", "sell"
SIDES = (BUY, SELL)
CONTINUOUS, SEALED = 0, 1  # the market parameter `mode`
# what a grid-access request may name (004 s3.3.2 attributes 1 and 2); the access
# parameters allow sources and natures by a bit mask over these, bit i for entry i
SOURCES = (*GC.TECHNOLOGIES, "storage")
NATURES = ("clean", "fossil")
NATURE_OF = {s: ("fossil" if s in GC.FOSSIL else "clean") for s in SOURCES}
# the safety classes a request states and the parameter safety_min asks (docs/PROTOCOL.md
# section 27): 0 none, 1 type-tested, 2 certified by an accredited lab, 3 and inspected on
# site, 4 and under a periodic inspection contract
SAFETY_MAX = 4
VOLTAGE_CAP_V = 110_000  # 001 s0: distributed generation within the 110 kV level
# the reasons an access decision names, one per failed attribute (004 s3.3.2; SOURCES s3)
ACCESS_REASONS = ("MISSING_ATTRIBUTE", "NOT_QUALIFIED", "SOURCE_NOT_ALLOWED",
                  "NATURE_NOT_ALLOWED", "SUPPLY_OUT_OF_RANGE", "PRICE_OUT_OF_RANGE",
                  "SAFETY_NOT_MET", "VOLTAGE_ABOVE_110KV")

PRICE_MAX = 10**8  # mpt/kWh: 100,000 points per kWh
WH_MAX = 10**9  # one order: 1 GWh
UPT_MAX = 2**62  # an amount in micro-points
LINES_MAX = 96  # lines in a published network (it travels in one 4096-byte message)
LINE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,15}")
PPM = 1_000_000
_COMMIT_TAG = b"meterledger/market-commit/v1"
_TERMS_TAG = b"meterledger/market-terms/v1"

_DAY = 86_400
# parameters (name -> (lowest, highest, default)); `access` is the regulator's, `market` the
# grid operator's (docs/PROTOCOL.md section 27)
PARAMETERS: dict[str, dict[str, tuple[int, int, int]]] = {
    "access": {"sources": (0, 2 ** len(SOURCES) - 1,
                           sum(1 << i for i, s in enumerate(SOURCES)
                               if s in GC.RENEWABLE or s == "storage")),
               "natures": (0, 3, 1),
               "supply_min_w": (0, 10**9, 1_000), "supply_max_w": (0, 10**9, 20_000_000),
               "price_min": (0, PRICE_MAX, 0), "price_max": (0, PRICE_MAX, 2_000),
               "safety_min": (0, SAFETY_MAX, 2),
               "voltage_max_v": (1, VOLTAGE_CAP_V, VOLTAGE_CAP_V),
               "valid_s": (3_600, 10 * 366 * _DAY, 365 * _DAY)},
    "market": {"mode": (CONTINUOUS, SEALED, SEALED),
               "cycle_s": (60, _DAY, 900), "gate_s": (0, _DAY, 300),
               "reveal_s": (1, _DAY, 120), "horizon_s": (0, 31 * _DAY, _DAY),
               "quotes_max": (1, 100, 10),
               "c1": (0, PRICE_MAX, 50), "c2": (0, PRICE_MAX, 10), "c3": (0, PRICE_MAX, 10),
               "beta_milli": (1, 10**6, 1_500), "cep_n": (1, 100, 10),
               "penalty_ppm": (0, PPM, 20_000), "imbalance": (0, PRICE_MAX, 600),
               "settle_s": (0, 31 * _DAY, 3_600), "contracts_max": (1, 10_000, 2_000),
               # the points an enrolled participant is granted once (001 s2.3 (1))
               "grant_upt": (0, 10**15, 100 * PPM),
               # the points each party of a green trade earns per kWh of clean energy it
               # delivered (its certificates moved) (001 s2.3 (2)): 1 point a kWh
               "clean_upt": (0, 10**12, PPM)},
}
# cycles and contracts are keyed by cycle_s; an order of a cycle is what its mode made it
FROZEN = {"market": ("cycle_s", "mode")}

BODIES: dict[str, dict[int, str]] = {
    MK_ENROLL: {1: "b8", 2: "b8", 3: "b8", 4: "t"},         # participant, fog, meter, line
    MK_ACCESS: {1: "t?", 2: "t?", 3: "u?", 4: "u?", 5: "u?", 6: "u?"},  # source, nature,
                                                            # supply W, price, safety, voltage V
    MK_TRANSFER: {1: "b8", 2: "u"},                         # to, upt
    MK_NETWORK: {1: "u", 2: "a"},                           # version, lines
    MK_ORDER: {1: "u", 2: "t", 3: "u", 4: "u", 5: "u", 7: "u?"},  # cycle, side, Wh, price,
                                                            # fee_max, green
    MK_CANCEL: {1: "u", 2: "t"},                            # cycle, side
    MK_COMMIT: {1: "u", 2: "b32"},                          # cycle, sealed-order digest
    MK_REVEAL: {1: "u", 2: "t", 3: "u", 4: "u", 5: "u", 6: "b32", 7: "u?"},  # ... salt, green
    MK_CLEAR: {1: "u"},                                     # cycle
    MK_SIGN: {1: "u", 2: "u", 3: "b32"},                    # cycle, contract number, terms
    MK_SETTLE: {1: "u"},                                    # cycle
    MK_REVIEW: {1: "u", 2: "u", 3: "u"},                    # cycle, contract, good (1) or not
}
_ORDER_RANGES: dict[int, Range] = {1: (0, TIME_MAX), 2: (3, 4), 3: (1, WH_MAX),
                                   4: (0, PRICE_MAX), 5: (0, PRICE_MAX), 7: (0, 1)}
BODY_RANGES: dict[str, dict[int, Range]] = {
    MK_ENROLL: {4: (1, 16)},
    MK_ACCESS: {1: (1, 16), 2: (1, 16), 3: (0, 10**12), 4: (0, PRICE_MAX),
                5: (0, SAFETY_MAX), 6: (0, 10**7)},
    MK_TRANSFER: {2: (1, UPT_MAX)},
    MK_NETWORK: {1: (1, 10**6), 2: (1, LINES_MAX)},
    MK_ORDER: _ORDER_RANGES,
    MK_CANCEL: {1: (0, TIME_MAX), 2: (3, 4)},
    MK_COMMIT: {1: (0, TIME_MAX)},
    MK_REVEAL: _ORDER_RANGES,
    MK_CLEAR: {1: (0, TIME_MAX)},
    MK_SIGN: {1: (0, TIME_MAX), 2: (0, 10_000)},
    MK_SETTLE: {1: (0, TIME_MAX)},
    MK_REVIEW: {1: (0, TIME_MAX), 2: (0, 10_000), 3: (0, 1)},
}
BODY_NAMES: dict[str, dict[int, str]] = {
    MK_ENROLL: {1: "participant", 2: "fog", 3: "meter", 4: "line"},
    MK_ACCESS: {1: "source", 2: "nature", 3: "supply_w", 4: "price", 5: "safety",
                6: "voltage_v"},
    MK_TRANSFER: {1: "to", 2: "upt"},
    MK_NETWORK: {1: "version", 2: "lines"},
    MK_ORDER: {1: "cycle", 2: "side", 3: "wh", 4: "price", 5: "fee_max", 7: "green"},
    MK_CANCEL: {1: "cycle", 2: "side"},
    MK_COMMIT: {1: "cycle", 2: "digest"},
    MK_REVEAL: {1: "cycle", 2: "side", 3: "wh", 4: "price", 5: "fee_max", 6: "salt",
                7: "green"},
    MK_CLEAR: {1: "cycle"},
    MK_SIGN: {1: "cycle", 2: "contract", 3: "terms"},
    MK_SETTLE: {1: "cycle"},
    MK_REVIEW: {1: "cycle", 2: "contract", 3: "good"},
}


def _bad(kind: str, msg: str) -> ProtocolError:
    return ProtocolError("bad_fields", f"{kind} body: {msg}")


def commit_digest(sender: bytes, cycle: int, side: str, wh: int, price: int, fee_max: int,
                  salt: bytes, green: int = 0) -> bytes:
    """What a sealed order commits to: SHA-256 over a tag and the deterministic CBOR of
    [sender, cycle, side, Wh, price, fee_max, salt] (the sender in it: no one can reveal
    another's commitment as their own), and a green order's 1 after the salt."""
    return hashlib.sha256(_COMMIT_TAG + encode([sender, cycle, side, wh, price, fee_max,
                                                salt, *([1] if green else [])])).digest()


def parse_line(item: Any) -> tuple[str, str, int, int]:
    """One line of a published network: [id, parent id ("" at the root), capacity W,
    redispatch cost mpt/kWh]; ProtocolError bad_fields when malformed."""
    if not (isinstance(item, list) and len(item) == 4):
        raise ProtocolError("bad_fields", "a line is [id, parent, capacity_w, redispatch]")
    lid, parent, cap, cost = item
    if not (isinstance(lid, str) and LINE_ID.fullmatch(lid)):
        raise ProtocolError("bad_fields", "a line id is 1-16 of a-z 0-9 . _ - starting with a "
                                          "letter or digit")
    if not (isinstance(parent, str) and (parent == "" or LINE_ID.fullmatch(parent))):
        raise ProtocolError("bad_fields", f"line {lid}: parent must be a line id or \"\"")
    for name, v, hi in (("capacity_w", cap, 10**10), ("redispatch", cost, PRICE_MAX)):
        if v.__class__ is not int or not 0 <= v <= hi:
            raise ProtocolError("bad_fields", f"line {lid}: {name} must be an integer in "
                                              f"[0, {hi}]")
    return lid, parent, cap, cost


def _side_rule(kind: str) -> Callable[[dict[int, Any]], None]:
    def rule(body: dict[int, Any]) -> None:
        if body[2] not in SIDES:
            raise _bad(kind, "side must be buy or sell")
    return rule


def _enroll_rule(body: dict[int, Any]) -> None:
    if not LINE_ID.fullmatch(body[4]):
        raise _bad(MK_ENROLL, "line must be 1-16 of a-z 0-9 . _ - starting with a letter or "
                              "digit")


def _network_rule(body: dict[int, Any]) -> None:
    seen: set[str] = set()
    for item in body[2]:
        try:
            lid, parent, _, _ = parse_line(item)
        except ProtocolError as e:
            raise _bad(MK_NETWORK, str(e)) from None
        if lid in seen:
            raise _bad(MK_NETWORK, f"line {lid} is listed twice")
        if parent and parent not in seen:  # parents first: the network is a tree, no cycle
            raise _bad(MK_NETWORK, f"line {lid}: its parent {parent} must be listed before it")
        seen.add(lid)


def _no_rule(body: dict[int, Any]) -> None:
    """The schema and ranges say it all; the access request's attributes are judged by the
    chain, which records a refusal per attribute rather than refusing the transaction."""


BODY_RULES: dict[str, Callable[[dict[int, Any]], None]] = {
    MK_ENROLL: _enroll_rule, MK_ACCESS: _no_rule, MK_TRANSFER: _no_rule,
    MK_NETWORK: _network_rule, MK_ORDER: _side_rule(MK_ORDER),
    MK_CANCEL: _side_rule(MK_CANCEL), MK_COMMIT: _no_rule, MK_REVEAL: _side_rule(MK_REVEAL),
    MK_CLEAR: _no_rule, MK_SIGN: _no_rule, MK_SETTLE: _no_rule, MK_REVIEW: _no_rule,
}


# --- builders ---------------------------------------------------------------------------------
def enroll_body(participant: bytes, fog: bytes, meter: bytes, line: str) -> dict[int, Any]:
    return {1: participant, 2: fog, 3: meter, 4: line}


def access_body(source: str | None, nature: str | None, supply_w: int | None,
                price: int | None, safety: int | None,
                voltage_v: int | None) -> dict[int, Any]:
    values = (source, nature, supply_w, price, safety, voltage_v)
    return {k: v for k, v in enumerate(values, 1) if v is not None}


def transfer_body(to: bytes, upt: int) -> dict[int, Any]:
    return {1: to, 2: upt}


def network_body(version: int, lines: list[tuple[str, str, int, int]]) -> dict[int, Any]:
    return {1: version, 2: [list(x) for x in lines]}


def order_body(cycle: int, side: str, wh: int, price: int, fee_max: int = 0,
               green: bool = False) -> dict[int, Any]:
    """An order; `green`: its energy comes with its green certificates (a green bid only
    matches green asks; key 7 is left out when not, so a plain order's bytes never change)."""
    return {1: cycle, 2: side, 3: wh, 4: price, 5: fee_max, **({7: 1} if green else {})}


def cancel_body(cycle: int, side: str) -> dict[int, Any]:
    return {1: cycle, 2: side}


def commit_body(cycle: int, digest: bytes) -> dict[int, Any]:
    return {1: cycle, 2: digest}


def reveal_body(cycle: int, side: str, wh: int, price: int, fee_max: int,
                salt: bytes, green: bool = False) -> dict[int, Any]:
    return {1: cycle, 2: side, 3: wh, 4: price, 5: fee_max, 6: salt, **({7: 1} if green else {})}


def cycle_body(cycle: int) -> dict[int, Any]:
    """The body of mk_clear and mk_settle."""
    return {1: cycle}


def sign_body(cycle: int, n: int, terms: bytes) -> dict[int, Any]:
    """A signature of contract n of the cycle, on its `terms` (`contract_terms`)."""
    return {1: cycle, 2: n, 3: terms}


def _raw(v: Any) -> bytes:
    return v if isinstance(v, bytes) else bytes.fromhex(v)


def contract_terms(cycle: int, n: int, c: dict[str, Any]) -> bytes:
    """What the three parties sign of a contract (its record, bytes or the API's hex):
    SHA-256 over a tag and the deterministic CBOR of [cycle, n, buyer, seller, Wh, bid, ask,
    P_T, fee, [bid order, ask order], the match transaction, green]; the midpoint, P_F and
    the escrow follow from them. A trade's proof recomputes it from the record."""
    return hashlib.sha256(_TERMS_TAG + encode([
        cycle, n, _raw(c["buyer"]), _raw(c["seller"]), int(c["wh"]), int(c["bid"]),
        int(c["ask"]), int(c["pt"]), int(c["fee"]), [_raw(d) for d in c["orders"]],
        _raw(c["tx"]), int(c.get("green") or 0)])).digest()


def review_body(cycle: int, n: int, good: bool) -> dict[int, Any]:
    return {1: cycle, 2: n, 3: int(good)}
