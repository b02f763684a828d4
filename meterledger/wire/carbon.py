"""Carbon-allowance and notary kinds of the type-12 transaction (docs/PROTOCOL.md section 26):
their body schemas, ranges and body rules, merged into `meterledger.wire.chain`'s tables. Pure.

Allowances are counted in grams of CO2 per emitter and compliance period (period p runs
from start + p x period_s, both chain parameters). A notary's `attest` names one record of
a peer chain (its chain id, the height and digest of the transaction it came from, a
subject and the values the chain applies); a record takes effect at the k-th attest of it
by distinct notaries of the chain's committee.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from meterledger.errors import ProtocolError
from meterledger.wire import certificates as GC
from meterledger.wire.cbor import encode
from meterledger.wire.schema import Range

CB_ALLOCATE, CB_TRANSFER, CB_SETTLE, CB_CCER = "cb_allocate", "cb_transfer", "cb_settle", "cb_ccer"
GC_LOCK, ATTEST = "gc_lock", "attest"
KINDS = (CB_ALLOCATE, CB_TRANSFER, CB_SETTLE, CB_CCER, GC_LOCK, ATTEST)

PERIOD_MAX = 10**6  # compliance periods counted from the chain's `start`
GRAMS_MAX = 2**62
# what a notarized record does on the chain it is posted to (section 26)
ISSUE, LOCK, OUTCOME = "issue", "lock", "outcome"
SUBJECTS = (ISSUE, LOCK, OUTCOME)
CREDITED, EXPIRED, REFUSED = "credited", "expired", "refused"
OUTCOMES = (CREDITED, EXPIRED, REFUSED)
PARTS_MAX = 64  # compliance periods one certificate's issuance record may name
_RECORD_TAG = b"meterledger/notarized/v1"

BODIES: dict[str, dict[int, str]] = {
    CB_ALLOCATE: {1: "t", 2: "u", 3: "u"},              # generator, period, baseline Wh (0: chain's)
    CB_TRANSFER: {1: "b8", 2: "u", 3: "u"},             # to, period, grams
    CB_SETTLE: {1: "b8", 2: "u"},                       # emitter, period
    CB_CCER: {1: "t", 2: "u", 3: "u"},                  # generator, period, claimed Wh
    GC_LOCK: {1: "t", 2: "u"},                          # certificate, carbon period
    ATTEST: {1: "b8", 2: "u", 3: "b32", 4: "t", 5: "m"},  # source chain, height, tx, subject,
}                                                        # values
BODY_RANGES: dict[str, dict[int, Range]] = {
    CB_ALLOCATE: {1: (1, 32), 2: (0, PERIOD_MAX), 3: (0, GC.WH_MAX)},
    CB_TRANSFER: {2: (0, PERIOD_MAX), 3: (1, GRAMS_MAX)},
    CB_SETTLE: {2: (0, PERIOD_MAX)},
    CB_CCER: {1: (1, 32), 2: (0, PERIOD_MAX), 3: (1, GC.WH_MAX)},
    GC_LOCK: {1: (3, 80), 2: (0, PERIOD_MAX)},
    ATTEST: {2: (0, 2**63 - 1), 4: (3, 96), 5: (1, 8)},
}
BODY_NAMES: dict[str, dict[int, str]] = {
    CB_ALLOCATE: {1: "generator", 2: "period", 3: "baseline_wh"},
    CB_TRANSFER: {1: "to", 2: "period", 3: "grams"},
    CB_SETTLE: {1: "emitter", 2: "period"},
    CB_CCER: {1: "generator", 2: "period", 3: "claimed_wh"},
    GC_LOCK: {1: "certificate", 2: "period"},
    ATTEST: {1: "source_chain", 2: "height", 3: "tx", 4: "subject", 5: "values"},
}



def _bad(kind: str, msg: str) -> ProtocolError:
    return ProtocolError("bad_fields", f"{kind} body: {msg}")


def period_of(start: int, period_s: int, ivl: int) -> int:
    """The compliance period of the interval ending at `ivl` (its last second, ivl - 1, is
    in [start + p period_s, start + (p + 1) period_s)); -1 before the first. The carbon
    chain books energy by it and the notaries split a certificate by it, alike."""
    t = ivl - 1 - start
    return -1 if t < 0 else t // period_s


def subject(what: str, cid: str) -> str:
    """A record's subject: what it does and the certificate it is about ("issue/pv-1/0-10")."""
    return f"{what}/{cid}"


def parse_subject(text: str) -> tuple[str, str]:
    """(what, certificate id) of a subject; ProtocolError bad_fields if malformed."""
    what, _, cid = text.partition("/")
    if what not in SUBJECTS:
        raise ProtocolError("bad_fields", f"subject {text!r} must start with one of "
                                          f"{', '.join(SUBJECTS)} and a /")
    GC.parse_certificate_id(cid)
    return what, cid


def record_digest(chain: bytes, height: int, tx: bytes, subj: str,
                  values: dict[str, Any]) -> bytes:
    """What k notaries attest: SHA-256 over the tag and the deterministic CBOR of the record
    (source chain id, height, transaction digest, subject, values)."""
    return hashlib.sha256(_RECORD_TAG + encode([chain, height, tx, subj, values])).digest()


def _id_rule(kind: str) -> Callable[[dict[int, Any]], None]:
    def rule(body: dict[int, Any]) -> None:
        if not GC.GENERATOR_ID.fullmatch(body[1]):
            raise _bad(kind, "generator must be 1-32 of a-z 0-9 . _ - starting with a letter "
                             "or digit")
    return rule


def _lock_rule(body: dict[int, Any]) -> None:
    try:
        GC.parse_certificate_id(body[1])
    except ProtocolError as e:
        raise _bad(GC_LOCK, str(e)) from None


def _attest_rule(body: dict[int, Any]) -> None:
    try:
        parse_subject(body[4])
    except ProtocolError as e:
        raise _bad(ATTEST, str(e)) from None
    if not all(isinstance(k, str) and 1 <= len(k) <= 16 for k in body[5]):
        raise _bad(ATTEST, "values must be keyed by names of 1-16 characters")


def _no_rule(body: dict[int, Any]) -> None:
    """The schema and ranges say it all."""


BODY_RULES: dict[str, Callable[[dict[int, Any]], None]] = {
    CB_ALLOCATE: _id_rule(CB_ALLOCATE), CB_TRANSFER: _no_rule, CB_SETTLE: _no_rule,
    CB_CCER: _id_rule(CB_CCER), GC_LOCK: _lock_rule, ATTEST: _attest_rule,
}


# --- builders ---------------------------------------------------------------------------------
def allocate_body(generator: str, period: int, baseline_wh: int = 0) -> dict[int, Any]:
    return {1: generator, 2: period, 3: baseline_wh}


def transfer_body(to: bytes, period: int, grams: int) -> dict[int, Any]:
    return {1: to, 2: period, 3: grams}


def settle_body(emitter: bytes, period: int) -> dict[int, Any]:
    return {1: emitter, 2: period}


def ccer_body(generator: str, period: int, claimed_wh: int) -> dict[int, Any]:
    return {1: generator, 2: period, 3: claimed_wh}


def lock_body(cert: str, period: int) -> dict[int, Any]:
    return {1: cert, 2: period}


def attest_body(chain: bytes, height: int, tx: bytes, subj: str,
                values: dict[str, Any]) -> dict[int, Any]:
    return {1: chain, 2: height, 3: tx, 4: subj, 5: dict(values)}
