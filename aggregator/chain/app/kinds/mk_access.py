"""`mk_access`: a participant applies for grid access as a seller with the five attributes
of 004 s3.3.2 (source, nature, supply, price, safety) plus its voltage level; its identity
is its enrolment. The chain decides and writes the decision either way (step 6): granted
until valid_s from now, or refused with a reason per failed attribute."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import market as MK

KIND = MK.MK_ACCESS
ROLE: str | None = "market"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    ap = G.enabled(st, "access", KIND)
    now = state.chain_time()
    reasons = M.decide_access(ap, tx.body, st.get(M.T_ENROLLED, tx.sender.id) is not None)
    names = MK.BODY_NAMES[KIND]
    st.put(M.T_ACCESS, tx.sender.id, {
        "granted": int(not reasons), "reasons": reasons,
        "until": now + ap["valid_s"] if not reasons else 0, "t": now, "tx": tx.digest,
        "attributes": {names[k]: v for k, v in sorted(tx.body.items())}})
    return st.effect(tx.effect())
