"""`mk_commit`: a sealed order's digest before the gate (001 s3.1: the first-price sealed
auction; `meterledger.wire.market.commit_digest`), one per participant and cycle."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import market as MK

KIND = MK.MK_COMMIT
ROLE: str | None = "market"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    mp = G.enabled(st, "market", KIND)
    if mp["mode"] != MK.SEALED:
        raise ChainError("market_mode", "this market is continuous: place orders (mk_order)")
    cycle = tx.body[1]
    M.check_cycle(mp, cycle, state.chain_time(), KIND)
    M.open_cycle(st, cycle, KIND)
    M.enrolled(st, tx.sender.id, KIND)
    key = G.u64(cycle) + tx.sender.id
    if st.get(M.T_COMMIT, key) is not None:
        raise ChainError("already_committed", f"{tx.sender.id.hex()} committed an order for "
                                              f"cycle {cycle} already")
    seq = st.get(M.T_SEQ, b"") or 0
    st.put(M.T_SEQ, b"", seq + 1)
    st.put(M.T_COMMIT, key, {"digest": tx.body[2], "seq": seq, "revealed": 0,
                             "tx": tx.digest})
    return st.effect(tx.effect())
