"""Notarized records from the peer chain (docs/PROTOCOL.md section 26): the notaries'
`attest` shares, the record that takes effect at the k-th, and the GC chain's side of a
conversion (lock, then burn or release).

    nt.share  record digest -> {"subject", "signers"} (shares of a record not yet in effect)
    nt.done   subject [@ source tx] -> {"record", "signers"} (in effect: never again)
    nt.out / nt.seq (green.emit): the events this chain's notaries relay to the peer

A notary's share is its signed transaction naming the record (source chain id, height and
digest of the source transaction, subject, values); the committee is the chain's
participants of role notary, the threshold k its `notaries` parameter. Nothing else is
trusted: a record below k has no effect, a subject takes effect once, whatever its shares.
"""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import carbon as K
from aggregator.chain.app import green as G
from aggregator.chain.app.green import Staged
from aggregator.chain.app.state import State
from aggregator.chain.ledger import ChainError
from meterledger.wire import carbon as CB
from meterledger.wire import certificates as GC

T_SHARE, T_DONE = "nt.share", "nt.done"


def attest(st: Staged, state: State, sender: bytes, tx: bytes,
           body: dict[int, Any]) -> bool:
    """Count the sender's share of the record `body` names; at the k-th distinct notary,
    apply it. True when it took effect."""
    np = G.enabled(st, "notaries", CB.ATTEST)
    chain, height, source_tx, subj, values = (body[k] for k in range(1, 6))
    peer = np["peer_chain"].to_bytes(8, "big", signed=True)
    if np["peer_chain"] and chain != peer:
        raise ChainError("unknown_source", f"records come from chain {peer.hex()}, not "
                                           f"{chain.hex()}")
    what, _ = CB.parse_subject(subj)
    # a certificate is issued once; a lock (and its outcome) once per lock transaction, as
    # a released certificate may be locked again
    done_key = subj.encode() + (b"" if what == CB.ISSUE else b"@" + source_tx)
    done = st.get(T_DONE, done_key)
    if done is not None:
        raise ChainError("record_applied", f"{subj} took effect already (record "
                                           f"{done['record'].hex()[:16]}); never again")
    digest = CB.record_digest(chain, height, source_tx, subj, values)
    share = st.get(T_SHARE, digest) or {"subject": subj, "signers": []}
    if sender in share["signers"] and len(share["signers"]) < np["threshold"]:
        raise ChainError("attest_repeated", f"notary {sender.hex()} attested record "
                                            f"{digest.hex()[:16]} already")
    # (a repeat share when the threshold was lowered since takes the record into effect)
    signers = sorted({*share["signers"], sender})
    if len(signers) < np["threshold"]:
        st.put(T_SHARE, digest, {"subject": subj, "signers": signers})
        return False
    apply_record(st, state, what, subj, values, tx, source_tx)
    st.put(T_SHARE, digest, None)
    st.put(T_DONE, done_key, {"record": digest, "signers": signers})
    return True


def apply_record(st: Staged, state: State, what: str, subj: str, values: dict[str, Any],
                 tx: bytes, source_tx: bytes) -> None:
    cid = subj.partition("/")[2]  # parsed by attest
    now = state.chain_time()
    if what == CB.OUTCOME:
        settle_lock(st, cid, values)
        return
    cp = G.enabled(st, "carbon", f"{what} record")
    if what == CB.ISSUE:
        K.certified(st, cp, values)
    else:
        owner = values.get("owner")
        registered = isinstance(owner, bytes) and state.participant(owner) is not None
        K.convert(st, cp, cid, values, tx, source_tx, now, registered)


# --- the GC chain's side of a conversion -----------------------------------------------------
def lock(st: Staged, cert: dict[str, Any], period: int, tx: bytes, now: int) -> None:
    """Lock an active certificate for conversion into carbon relief for its owner: it cannot
    move until the carbon chain's outcome comes back (burn or release)."""
    gc = G.enabled(st, "certificates", CB.GC_LOCK)
    G.enabled(st, "notaries", CB.GC_LOCK)
    wh = cert["hi"] - cert["lo"]
    deadline = now + gc["lock_s"]
    cert["state"] = G.LOCKED
    cert["lock"] = {"period": period, "deadline": deadline, "tx": tx}
    G.put_certificate(st, cert)
    G.credit(st, cert["owner"], active=-wh, locked=wh)
    G.emit(st, CB.subject(CB.LOCK, cert["id"]), tx,
           {"owner": cert["owner"], "wh": wh, "period": period, "deadline": deadline})


def settle_lock(st: Staged, cid: str, values: dict[str, Any]) -> None:
    """The carbon chain's outcome of a lock: credited burns the certificate (converted, never
    moves again); expired or refused releases it."""
    outcome = values.get("outcome")
    if outcome not in CB.OUTCOMES:
        raise ChainError("bad_record", f"an outcome record's outcome is one of "
                                       f"{', '.join(CB.OUTCOMES)}, not {outcome!r}")
    gid, lo, hi = GC.parse_certificate_id(cid)
    cert = st.get(G.T_CERT, G.cert_key(gid, lo, hi))
    if cert is None or cert["state"] != G.LOCKED or cert["lock"]["tx"] != values.get("lock"):
        raise ChainError("not_locked", f"certificate {cid} is not locked for conversion by "
                                       "the lock this outcome names")
    cert, wh = dict(cert), hi - lo
    if outcome == CB.CREDITED:
        cert["state"] = G.CONVERTED
        G.credit(st, cert["owner"], locked=-wh, converted=wh)
    else:
        cert["state"] = G.ACTIVE
        G.credit(st, cert["owner"], locked=-wh, active=wh)
    cert["lock"] = {**cert["lock"], "outcome": outcome}
    G.put_certificate(st, cert)

