"""The green-certificate application's state and its issuance rule (docs/PROTOCOL.md
section 25), shared by its kinds (params, generator, gc_*) and the anchor kind, whose
energy statements issue certificates.

State lives in application records (State.record / StateWriter.put_record), one table per
thing, keys chosen so a key-ordered scan answers the queries:

    app.params    application name          -> {"version", "values"}
    gc.generator  generator id              -> {"tech", "capacity_w", "commissioned", "fog",
                                                "meter", "support", "owner"}
    gc.meter      fog id || meter id         -> generator id
    st.stated     fog id || meter id || ivl  -> statement digest (every chain: no repeats)
    gc.account    generator id              -> {"certified", "issued", "estimated",
                                                "refused", "statements", "dur"}
    gc.segment    generator id "/" || hi     -> {"lo", "ivl", "digest", "anchor"}
    gc.cert       generator id "/" || lo || hi -> the certificate (CERT_FIELDS)
    gc.owned      owner id || certificate key -> 1
    gc.balance    owner id                  -> {"active", "retired"} (Wh)

(integers in keys are 8-byte big-endian, so key order is numeric order.) A generator's
certified export is counted in Wh from its first certified Wh: each measured statement of
an eligible generator adds a segment [lo, hi) of that count, and every full
`certificate_wh` of it becomes a certificate over exactly that range. So every Wh of every
generator is in at most one certificate, by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aggregator.chain.app.state import Effect, State, StateWriter
from aggregator.chain.ledger import ChainError, Receipt
from meterledger import wire as P
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC
from meterledger.wire import market as MK

T_PARAMS, T_GEN, T_METER, T_STATED = "app.params", "gc.generator", "gc.meter", "st.stated"
T_ACCOUNT, T_SEGMENT, T_CERT = "gc.account", "gc.segment", "gc.cert"
T_OWNED, T_BALANCE = "gc.owned", "gc.balance"
T_OUT, T_SEQ = "nt.out", "nt.seq"

ACTIVE, SPLIT, RETIRED = "active", "split", "retired"
LOCKED, CONVERTED = "locked", "converted"  # section 26: a conversion under way, done
# the parameters each application takes: name -> (lowest, highest, default)
_DAY, _YEAR = 86_400, 365 * 86_400
_G_MWH = (0, 10**7)  # grams of CO2 per MWh
PARAMETERS: dict[str, dict[str, tuple[int, int, int]]] = {
    "certificates": {"certificate_wh": (1_000, 10**9, GC.MWH),
                     "period_s": (900, 100 * 366 * _DAY, _YEAR),
                     # how long a certificate locked for conversion waits for the carbon
                     # chain's credit before the notaries' expiry releases it (section 26)
                     "lock_s": (60, 366 * _DAY, _DAY)},
    # section 26; the gas, benchmark, fine, CCER and conversion values are our decisions
    # on the sources' gaps (docs/PROTOCOL.md)
    "carbon": {"start": (0, 2**62, 0), "period_s": (900, 100 * 366 * _DAY, _YEAR),
               "grace_s": (0, 366 * _DAY, 30 * _DAY),
               "factor_coal": (*_G_MWH, 811_200), "factor_gas": (*_G_MWH, 490_000),
               "benchmark_coal": (*_G_MWH, 770_000), "benchmark_gas": (*_G_MWH, 465_000),
               "fine_per_t": (0, 10**9, 10_000), "ccer_factor": (*_G_MWH, 581_000),
               "convert_per_mwh": (*_G_MWH, 581_000)},
    # peer_chain: the chain id whose records are taken, as a signed 64-bit integer (CBOR
    # integers here are int64), 0 for any
    "notaries": {"threshold": (1, 64, 2), "peer_chain": (-(2**63), 2**63 - 1, 0)},
    **MK.PARAMETERS,  # grid access and the market (section 27)
}


def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def cert_key(generator: str, lo: int, hi: int) -> bytes:
    return generator.encode() + b"/" + u64(lo) + u64(hi)


# --- the records an effect writes -------------------------------------------------------------
@dataclass(frozen=True)
class Writes(Effect):
    """An effect that writes application records, in order (the last write of a key wins)."""

    writes: tuple[tuple[str, bytes, Any], ...]

    def apply(self, w: StateWriter, at: Receipt | None) -> None:
        for table, key, value in self.writes:
            w.put_record(table, key, value)


def _int64(v: Any) -> bool:
    if isinstance(v, bool) or v is None or isinstance(v, (bytes, str)):
        return True
    if isinstance(v, int):
        return -(2**63) <= v < 2**63
    if isinstance(v, dict):
        return all(_int64(k) and _int64(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return all(_int64(x) for x in v)
    return True


class Staged:
    """Reads through the chain state with this transaction's own writes on top, and the
    writes in order: what a kind's check builds its Writes effect from."""

    def __init__(self, state: State) -> None:
        self.state = state
        self._mine: dict[tuple[str, bytes], Any] = {}
        self._tables: dict[str, dict[bytes, Any]] = {}  # the same writes, by table
        self.writes: list[tuple[str, bytes, Any]] = []

    def get(self, table: str, key: bytes) -> Any:
        k = (table, key)
        return self._mine[k] if k in self._mine else self.state.record(table, key)

    def put(self, table: str, key: bytes, value: Any) -> None:
        if not _int64(value):  # the stores keep int64; a rule's product may not fit
            raise ChainError("out_of_range", f"a {table} record would hold an integer beyond "
                                             "int64; the transaction is refused")
        self._mine[(table, key)] = value
        self._tables.setdefault(table, {})[key] = value
        self.writes.append((table, key, value))

    def scan(self, table: str, prefix: bytes) -> list[tuple[bytes, Any]]:
        """Every record of `table` whose key starts with `prefix`, in key order, this
        transaction's own writes included (and its deletions, None, left out)."""
        found: dict[bytes, Any] = {}
        after = prefix
        while True:
            nxt = self.state.next_record(table, after)
            if nxt is None or not nxt[0].startswith(prefix):
                break
            found[nxt[0]] = nxt[1]
            after = nxt[0]
        for k, v in self._tables.get(table, {}).items():
            if k.startswith(prefix):
                found[k] = v
        return [(k, found[k]) for k in sorted(found) if found[k] is not None]

    def walk(self, table: str, prefix: bytes) -> Iterator[tuple[bytes, Any]]:
        """`scan`, lazily: the records are read one by one as the caller asks for them (a
        caller that stops early reads no more)."""
        mine = sorted((k, v) for k, v in self._tables.get(table, {}).items()
                      if k.startswith(prefix))
        i, after = 0, prefix
        nxt = self.state.next_record(table, after)
        while True:
            stored = nxt if nxt is not None and nxt[0].startswith(prefix) else None
            if stored is None and i == len(mine):
                return
            if stored is None or (i < len(mine) and mine[i][0] <= stored[0]):
                key, value = mine[i]
                i += 1
                if stored is not None and stored[0] == key:  # ours replaces the stored one
                    nxt = self.state.next_record(table, key)
            else:
                key, value = stored
                nxt = self.state.next_record(table, key)
            if value is not None:
                yield key, value

    def effect(self, e: Effect) -> Writes:
        return Writes(*e.common(), tuple(self.writes))


# --- parameters ----------------------------------------------------------------------------------
# parameters a later version may not change: the periods records are keyed by
FROZEN = {"carbon": ("start", "period_s"), **MK.FROZEN}


def effective(app: str, values: dict[str, int]) -> dict[str, int]:
    """`values` with the defaults of the parameters they do not name."""
    out = {k: d for k, (_, _, d) in PARAMETERS.get(app, {}).items()}
    out.update(values)
    return out


def params(st: Staged, app: str) -> dict[str, int] | None:
    """The application's parameters (defaults filled in), None while it is not enabled."""
    rec = st.get(T_PARAMS, app.encode())
    return None if rec is None else effective(app, rec["values"])


def enabled(st: Staged, app: str, kind: str) -> dict[str, int]:
    p = params(st, app)
    if p is None:
        raise ChainError("application_disabled", f"a {kind} needs the {app} application, "
                                                 "which this chain has not enabled (params)")
    return p


def check_values(app: str, values: dict[str, Any]) -> dict[str, int]:
    """The values a params transaction sets, checked against PARAMETERS."""
    known = PARAMETERS.get(app)
    if known is None:
        raise ChainError("bad_params", f"no parameters are defined for {app!r} yet")
    out: dict[str, int] = {}
    for name, value in sorted(values.items()):
        r = known.get(name)
        if r is None:
            raise ChainError("bad_params", f"{app} has no parameter {name!r} (it has "
                                           f"{', '.join(sorted(known))})")
        if value.__class__ is not int or not r[0] <= value <= r[1]:
            raise ChainError("bad_params", f"{app} parameter {name} must be an integer in "
                                           f"[{r[0]}, {r[1]}], not {value!r}")
        out[name] = value
    return out


# --- issuance: the anchor's energy statements ----------------------------------------------------
def _account(st: Staged, gid: str) -> dict[str, Any]:
    acct = st.get(T_ACCOUNT, gid.encode())
    return dict(acct) if acct is not None else {"certified": 0, "issued": 0, "estimated": 0,
                                                "refused": 0, "statements": 0, "dur": 0}


def credit(st: Staged, owner: bytes, **wh: int) -> None:
    """Change an owner's certificate balance: Wh by state (active, retired, locked,
    converted)."""
    bal = dict(st.get(T_BALANCE, owner) or {"active": 0, "retired": 0})
    for state, delta in sorted(wh.items()):
        bal[state] = bal.get(state, 0) + delta
    st.put(T_BALANCE, owner, bal)


# --- the cross-chain outbox (section 26) ------------------------------------------------------
def emit(st: Staged, subj: str, tx: bytes, values: dict[str, Any]) -> None:
    """An event the notaries relay to the peer chain (an issuance, a lock, a conversion's
    outcome), numbered in chain order: every issuance, so notaries enabled later still
    find the certificates issued before."""
    seq = st.get(T_SEQ, b"") or 0
    st.put(T_OUT, u64(seq), {"subject": subj, "tx": tx, "values": values})
    st.put(T_SEQ, b"", seq + 1)


def put_certificate(st: Staged, cert: dict[str, Any]) -> None:
    key = cert_key(cert["generator"], cert["lo"], cert["hi"])
    st.put(T_CERT, key, cert)
    st.put(T_OWNED, cert["owner"] + key, 1)


def new_certificate(generator: str, lo: int, hi: int, owner: bytes, first_ivl: int,
                    last_ivl: int, origin: str) -> dict[str, Any]:
    return {"id": GC.certificate_id(generator, lo, hi), "generator": generator, "lo": lo,
            "hi": hi, "owner": owner, "state": ACTIVE, "first_ivl": first_ivl,
            "last_ivl": last_ivl, "origin": origin}


def record_statements(st: Staged, fog: bytes, anchor: bytes,
                      statements: Iterable[P.Message]) -> None:
    """Each statement once per fog, meter and interval on any chain (a repeat is refused:
    `anchor_statement_repeated`); on a chain with certificates enabled, the measured export
    of an eligible generator is certified and every full certificate_wh issued."""
    gc = params(st, "certificates")
    for s in statements:
        f = s.fields
        meter, ivl = f[1], f[2]
        stated = fog + meter + u64(ivl)
        if st.get(T_STATED, stated) is not None:
            raise ChainError("anchor_statement_repeated",
                             f"meter {meter.hex()} interval {ivl} was stated by this fog "
                             "before; a statement is never replaced")
        st.put(T_STATED, stated, s.digest)
        if gc is None:
            continue
        gid_raw = st.get(T_METER, fog + meter)
        if gid_raw is None:
            continue  # a meter no generator on this chain is measured by
        _certify(st, gc, gid_raw.decode(), anchor, s)


def implausible(gen: dict[str, Any], f: dict[int, Any], first_dur: int) -> bool:
    """A statement (fields `f`) of generator `gen` that no chain counts: more export than
    its registered capacity can give in the interval (rounded up; certifying it would also
    let one statement issue unboundedly many certificates), or of another interval length
    than its first counted one (`first_dur`, 0 for none yet: a fog whose interval_s changed
    could overlap intervals already counted)."""
    return f[5] > -(-gen["capacity_w"] * f[3] // 3600) or first_dur not in (0, f[3])


def _certify(st: Staged, gc: dict[str, int], gid: str, anchor: bytes,
             s: P.Message) -> None:
    f = s.fields
    gen = st.get(T_GEN, gid.encode())
    acct = _account(st, gid)
    acct["statements"] += 1
    eligible = (gen["tech"] in GC.CERTIFIABLE and gen["support"] == "certificates"
                and f[2] - f[3] >= gen["commissioned"])
    if not eligible or f[5] == 0:
        pass
    elif f[6]:  # estimated: counted, never certified (docs/PROTOCOL.md section 25)
        acct["estimated"] += f[5]
    elif implausible(gen, f, acct["dur"]):  # counted, never certified
        acct["refused"] += f[5]
    else:
        _segment(st, gc, gid, gen, acct, anchor, s)
    st.put(T_ACCOUNT, gid.encode(), acct)


def _segment(st: Staged, gc: dict[str, int], gid: str, gen: dict[str, Any],
             acct: dict[str, Any], anchor: bytes, s: P.Message) -> None:
    """Add the statement's export to the generator's certified count, and issue every full
    certificate_wh of it."""
    f = s.fields
    lo, hi = acct["certified"], acct["certified"] + f[5]
    st.put(T_SEGMENT, gid.encode() + b"/" + u64(hi),
           {"lo": lo, "ivl": f[2], "digest": s.digest, "anchor": anchor})
    acct["certified"], acct["dur"] = hi, f[3]
    size = gc["certificate_wh"]
    while acct["certified"] - acct["issued"] >= size:
        c_lo = acct["issued"]
        cert = new_certificate(gid, c_lo, c_lo + size, gen["owner"], ivl_of(st, gid, c_lo),
                               ivl_of(st, gid, c_lo + size - 1), "issued")
        put_certificate(st, cert)
        credit(st, gen["owner"], active=size)
        emit(st, CB.subject(CB.ISSUE, cert["id"]), anchor, {"gen": gid})
        acct["issued"] = c_lo + size


# --- certificates held ----------------------------------------------------------------------------
def held(st: Staged, cid: str, sender: bytes, kind: str) -> dict[str, Any]:
    """The active certificate `cid` owned by `sender`, or the ChainError saying why not."""
    gid, lo, hi = GC.parse_certificate_id(cid)
    cert = st.get(T_CERT, cert_key(gid, lo, hi))
    if cert is None:
        raise ChainError("unknown_certificate", f"no certificate {cid} on this chain")
    if cert["owner"] != sender:
        raise ChainError("not_owner", f"certificate {cid} belongs to {cert['owner'].hex()}, "
                                      f"not to the sender {sender.hex()}")
    if cert["state"] == RETIRED:
        raise ChainError("certificate_retired", f"certificate {cid} was retired: it never "
                                                f"moves again ({kind} refused)")
    if cert["state"] in (LOCKED, CONVERTED):
        raise ChainError(f"certificate_{cert['state']}",
                         f"certificate {cid} is {cert['state']} for conversion into carbon "
                         f"relief ({kind} refused)")
    if cert["state"] != ACTIVE:
        raise ChainError("certificate_spent", f"certificate {cid} is {cert['state']}: its "
                                              "parts are certificates of their own")
    return dict(cert)


def move(st: Staged, cert: dict[str, Any], to: bytes) -> None:
    """Give an active certificate to `to` (its owner index and both balances follow)."""
    key = cert_key(cert["generator"], cert["lo"], cert["hi"])
    wh = cert["hi"] - cert["lo"]
    st.put(T_OWNED, cert["owner"] + key, None)
    credit(st, cert["owner"], active=-wh)
    cert["owner"] = to
    put_certificate(st, cert)
    credit(st, to, active=wh)


def retire(st: Staged, cert: dict[str, Any], info: dict[str, Any]) -> None:
    wh = cert["hi"] - cert["lo"]
    cert["state"], cert["retired"] = RETIRED, info
    put_certificate(st, cert)
    credit(st, cert["owner"], active=-wh, retired=wh)


def split(st: Staged, cert: dict[str, Any], wh: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two certificates tiling `cert` (the first of `wh` Wh); `cert` becomes split."""
    lo, hi, gid = cert["lo"], cert["hi"], cert["generator"]
    if not 0 < wh < hi - lo:
        raise ChainError("split_out_of_range", f"certificate {cert['id']} holds {hi - lo} Wh: "
                                               f"a split must leave both parts at least 1 Wh, "
                                               f"not {wh} and {hi - lo - wh}")
    mid = lo + wh
    first = new_certificate(gid, lo, mid, cert["owner"], cert["first_ivl"],
                            ivl_of(st, gid, mid - 1), cert["id"])
    second = new_certificate(gid, mid, hi, cert["owner"], ivl_of(st, gid, mid),
                             cert["last_ivl"], cert["id"])
    key = cert_key(gid, lo, hi)
    st.put(T_OWNED, cert["owner"] + key, None)
    cert["state"] = SPLIT
    st.put(T_CERT, key, cert)
    put_certificate(st, first)
    put_certificate(st, second)
    return first, second


def ivl_of(st: Staged, gid: str, wh: int) -> int:
    """The interval of the statement holding the generator's Wh number `wh` (0-based): the
    first segment ending above it (segments are keyed by their end), this transaction's
    own segments included."""
    prefix = gid.encode() + b"/"
    for table, key, value in reversed(st.writes):
        if table == T_SEGMENT and key.startswith(prefix) \
                and value["lo"] <= wh < int.from_bytes(key[-8:], "big"):
            return int(value["ivl"])
    found = st.state.next_record(T_SEGMENT, prefix + u64(wh))
    if found is None or not found[0].startswith(prefix):
        raise ChainError("split_out_of_range", f"no statement of {gid} holds its Wh {wh}")
    return int(found[1]["ivl"])
