"""Green-certificate kinds of the type-12 transaction (docs/PROTOCOL.md section 25): their
body schemas, ranges and body rules, merged into `meterledger.wire.chain`'s tables. Pure.

A certificate is a whole-Wh range of one generator's certified export: its id is
"<generator>/<lo>-<hi>" (lo inclusive, hi exclusive, Wh counted from the generator's first
certified Wh), so two certificates of one generator never overlap by construction, and a
split makes two ranges that tile the one split.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire.schema import COUNT_MAX, TIME_MAX, Range

PARAMS, GENERATOR = "params", "generator"
GC_TRANSFER, GC_SPLIT, GC_RETIRE = "gc_transfer", "gc_split", "gc_retire"
KINDS = (PARAMS, GENERATOR, GC_TRANSFER, GC_SPLIT, GC_RETIRE)

# applications a chain enables with a `params` transaction, and who sets each
APPLICATIONS = {"certificates": "registry", "carbon": "regulator", "notaries": "dispatch",
                # grid access and the P2P market (section 27): the regulator's admission
                # rules, the grid operator's market
                "access": "regulator", "market": "dispatch"}
TECHNOLOGIES = ("pv", "wind", "biomass", "hydro", "coal", "gas", "nuclear")
RENEWABLE = ("pv", "wind", "biomass", "hydro")
CERTIFIABLE = ("pv", "wind", "biomass")  # 003 s3.2.4(1): non-hydro renewable energy
FOSSIL = ("coal", "gas")
SUPPORTS = ("certificates", "subsidy")  # 003 s3.2.2: one of the two, per generator
PURPOSES = ("quota", "voluntary")  # renewable-quota compliance, voluntary green consumption
MWH = 1_000_000  # Wh in one certificate as issued (003 s3.2.4(1): 1 MWh = 1 certificate)
WH_MAX = 2**62  # a generator's certified Wh, far beyond any plant's life

BODIES: dict[str, dict[int, str]] = {
    PARAMS: {1: "t", 2: "u", 3: "m"},                            # application, version, values
    GENERATOR: {1: "t", 2: "t", 3: "u", 4: "u", 5: "b8", 6: "b8", 7: "t", 8: "b8"},
    GC_TRANSFER: {1: "t", 2: "b8"},                              # certificate, to
    GC_SPLIT: {1: "t", 2: "u"},                                  # certificate, Wh of the first
    GC_RETIRE: {1: "t", 2: "t", 3: "t", 4: "u"},                 # cert, beneficiary, purpose,
}                                                                # compliance year
BODY_RANGES: dict[str, dict[int, Range]] = {
    PARAMS: {1: (1, 16), 2: (1, COUNT_MAX), 3: (0, 64)},
    GENERATOR: {1: (1, 32), 2: (1, 16), 3: (1, 10**13), 4: (0, TIME_MAX), 7: (1, 16)},
    GC_TRANSFER: {1: (3, 80)},
    GC_SPLIT: {1: (3, 80), 2: (1, WH_MAX)},
    GC_RETIRE: {1: (3, 80), 2: (1, 128), 3: (1, 16), 4: (1970, 9999)},
}

BODY_NAMES: dict[str, dict[int, str]] = {
    PARAMS: {1: "application", 2: "version", 3: "values"},
    GENERATOR: {1: "id", 2: "tech", 3: "capacity_w", 4: "commissioned", 5: "fog", 6: "meter",
                7: "support", 8: "owner"},
    GC_TRANSFER: {1: "certificate", 2: "to"},
    GC_SPLIT: {1: "certificate", 2: "wh"},
    GC_RETIRE: {1: "certificate", 2: "beneficiary", 3: "purpose", 4: "year"},
}

GENERATOR_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_CERT = re.compile(r"([a-z0-9][a-z0-9._-]{0,31})/(0|[1-9][0-9]{0,18})-([1-9][0-9]{0,18})")


def _bad(kind: str, msg: str) -> ProtocolError:
    return ProtocolError("bad_fields", f"{kind} body: {msg}")


def certificate_id(generator: str, lo: int, hi: int) -> str:
    return f"{generator}/{lo}-{hi}"


def parse_certificate_id(cid: str) -> tuple[str, int, int]:
    """(generator, lo, hi) of a certificate id; ProtocolError bad_fields if malformed."""
    m = _CERT.fullmatch(cid)
    if m is None or int(m[2]) >= int(m[3]) or int(m[3]) > WH_MAX:
        raise ProtocolError("bad_fields", f"certificate id {cid!r} is not "
                                          "<generator>/<lo>-<hi> with lo < hi <= 2^62")
    return m[1], int(m[2]), int(m[3])


def _params_rules(body: dict[int, Any]) -> None:
    if body[1] not in APPLICATIONS:
        raise _bad(PARAMS, f"application must be one of {', '.join(sorted(APPLICATIONS))}")
    if not all(isinstance(k, str) and 1 <= len(k) <= 32 for k in body[3]):
        raise _bad(PARAMS, "values must be keyed by names of 1-32 characters")


def _generator_rules(body: dict[int, Any]) -> None:
    if not GENERATOR_ID.fullmatch(body[1]):
        raise _bad(GENERATOR, "id must be 1-32 of a-z 0-9 . _ - starting with a letter or "
                              "digit")
    if body[2] not in TECHNOLOGIES:
        raise _bad(GENERATOR, f"technology must be one of {', '.join(TECHNOLOGIES)}")
    if body[7] not in SUPPORTS:
        raise _bad(GENERATOR, f"support must be one of {', '.join(SUPPORTS)}")


def _cert_rule(kind: str) -> Callable[[dict[int, Any]], None]:
    def rule(body: dict[int, Any]) -> None:
        try:
            parse_certificate_id(body[1])
        except ProtocolError as e:
            raise _bad(kind, str(e)) from None
        if kind == GC_RETIRE and body[3] not in PURPOSES:
            raise _bad(kind, f"purpose must be one of {', '.join(PURPOSES)}")
    return rule


BODY_RULES: dict[str, Callable[[dict[int, Any]], None]] = {
    PARAMS: _params_rules, GENERATOR: _generator_rules, GC_TRANSFER: _cert_rule(GC_TRANSFER),
    GC_SPLIT: _cert_rule(GC_SPLIT), GC_RETIRE: _cert_rule(GC_RETIRE),
}


# --- builders ---------------------------------------------------------------------------------
def params_body(app: str, version: int, values: dict[str, Any]) -> dict[int, Any]:
    return {1: app, 2: version, 3: dict(values)}


def generator_body(gid: str, tech: str, capacity_w: int, commissioned: int, fog: bytes,
                   meter: bytes, support: str, owner: bytes) -> dict[int, Any]:
    return {1: gid, 2: tech, 3: capacity_w, 4: commissioned, 5: fog, 6: meter, 7: support,
            8: owner}


def transfer_body(cert: str, to: bytes) -> dict[int, Any]:
    return {1: cert, 2: to}


def split_body(cert: str, wh: int) -> dict[int, Any]:
    return {1: cert, 2: wh}


def retire_body(cert: str, beneficiary: str, purpose: str, year: int) -> dict[int, Any]:
    return {1: cert, 2: beneficiary, 3: purpose, 4: year}
