"""`mk_reveal`: open a sealed order in the reveal window after the gate; it must match the
commitment, and then passes the same checks as any order (who may quote, the bid floor)
and holds a bid's most."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import market as MK

KIND = MK.MK_REVEAL
ROLE: str | None = "market"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    mp = G.enabled(st, "market", KIND)
    if mp["mode"] != MK.SEALED:
        raise ChainError("market_mode", "this market is continuous: there is nothing to reveal")
    cycle, side, wh, price, fee_max, salt = (tx.body[k] for k in range(1, 7))
    now, gate = state.chain_time(), M.gate(mp, cycle)
    if cycle % mp["cycle_s"] or now < gate:
        raise ChainError("gate_open", f"orders of cycle {cycle} are revealed from its gate "
                                      f"{gate} (chain time {now})")
    if now >= gate + mp["reveal_s"]:
        raise ChainError("reveal_closed", f"the reveal window of cycle {cycle} closed at "
                                          f"{gate + mp['reveal_s']} (chain time {now})")
    M.open_cycle(st, cycle, KIND)
    key = G.u64(cycle) + tx.sender.id
    com = st.get(M.T_COMMIT, key)
    if com is None:
        raise ChainError("no_commitment", f"{tx.sender.id.hex()} committed no order for cycle "
                                          f"{cycle}")
    if com["revealed"]:
        raise ChainError("already_revealed", f"the order for cycle {cycle} was revealed")
    green = tx.body.get(7, 0)
    if MK.commit_digest(tx.sender.id, cycle, side, wh, price, fee_max, salt,
                        green) != com["digest"]:
        raise ChainError("reveal_mismatch", "the revealed order and salt do not hash to the "
                                            "committed digest")
    M.check_quote(st, mp, cycle, side, tx.sender.id, tx.body, now, KIND)
    M.put_order(st, mp, cycle, side, tx.sender.id, tx.body, None, tx.digest, com)
    st.put(M.T_COMMIT, key, {**com, "revealed": 1})
    return st.effect(tx.effect())
