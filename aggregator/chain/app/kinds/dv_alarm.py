"""`dv_alarm`: a fog or the utility records a dangerous-behaviour alarm: an operation seen on
a device that no approved ticket of that operation covered (docs/PROTOCOL.md section 29;
003 s2.2.6)."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_ALARM
ROLE: str | None = None
ROLES = ("fog", "utility")  # ROLE None: the rule checks these


def check(tx: Tx, state: State) -> Effect:
    DVS.allowed(tx.sender, KIND, ROLES)
    st = G.Staged(state)
    # a fog's race (docs/PROTOCOL.md section 29) is a no-op, never a refusal that halts it
    DVS.alarm(st, tx.sender.id, tx.body, tx.digest, state.chain_time(),
             fog=tx.sender.role == "fog")
    return st.effect(tx.effect())
