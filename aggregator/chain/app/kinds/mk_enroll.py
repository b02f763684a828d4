"""`mk_enroll`: the grid operator binds a market participant to its metering point (fog and
meter, whose owner consented to the market) and its connection line; the participant is
qualified to buy and granted its points once (001 s2.3 (1); docs/PROTOCOL.md section 27)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import FOG, ChainError
from meterledger.wire import market as MK

KIND = MK.MK_ENROLL
ROLE: str | None = "dispatch"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    mp = G.enabled(st, "market", KIND)
    pid, fog, meter, line = tx.body[1], tx.body[2], tx.body[3], tx.body[4]
    if tx.sender.id != M.operator(st):
        raise ChainError("not_permitted", f"the grid operator {M.operator(st).hex()} enrols "
                                          f"participants, not {tx.sender.id.hex()}")
    p = state.participant(pid)
    if p is None or p.role != "market":
        raise ChainError("unknown_participant", f"{pid.hex()} is not a registered market "
                                                "participant")
    f = state.participant(fog)
    if f is None or f.role != FOG:
        raise ChainError("unknown_fog", f"{fog.hex()} is not a registered fog")
    if st.get(M.T_ENROLLED, pid) is not None:
        raise ChainError("already_enrolled", f"{pid.hex()} is enrolled already")
    taken = st.get(M.T_MMETER, fog + meter)
    if taken is not None:
        raise ChainError("meter_taken", f"meter {meter.hex()} of fog {fog.hex()} is enrolled "
                                        f"for {bytes(taken).hex()} already")
    if line not in M.network(st):
        raise ChainError("unknown_line", f"line {line!r} is not in the published network")
    st.put(M.T_ENROLLED, pid, {"fog": fog, "meter": meter, "line": line,
                               "t": state.chain_time(), "tx": tx.digest})
    st.put(M.T_MMETER, fog + meter, pid)
    M.credit(st, pid, mp["grant_upt"])
    return st.effect(tx.effect())
