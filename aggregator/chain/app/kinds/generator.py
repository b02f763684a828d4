"""`generator`: the registry authority registers a generator, the fog and meter that measure
it, its owner and its choice of support: certificates or a price subsidy, never both
(003 s3.2.2; docs/PROTOCOL.md section 25)."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import FOG, ChainError
from meterledger.wire import certificates as GC

KIND = GC.GENERATOR
ROLE: str | None = "registry"


def check(tx: Tx, state: State) -> Effect:
    gid, tech, capacity, commissioned, fog, meter, support, owner = (
        tx.body[k] for k in range(1, 9))
    st = G.Staged(state)
    if st.get(G.T_GEN, gid.encode()) is not None:
        raise ChainError("generator_exists", f"generator {gid} is registered already")
    taken = st.get(G.T_METER, fog + meter)
    if taken is not None:
        raise ChainError("meter_taken", f"meter {meter.hex()} of fog {fog.hex()} measures "
                                        f"generator {taken.decode()} already")
    f = state.participant(fog)
    if f is None or f.role != FOG:
        raise ChainError("unknown_fog", f"{fog.hex()} is not a registered fog")
    if state.participant(owner) is None:
        raise ChainError("unknown_participant", f"owner {owner.hex()} is not registered")
    st.put(G.T_GEN, gid.encode(), {"tech": tech, "capacity_w": capacity,
                                   "commissioned": commissioned, "fog": fog, "meter": meter,
                                   "support": support, "owner": owner})
    st.put(G.T_METER, fog + meter, gid.encode())
    return st.effect(tx.effect())
