"""`dv_firmware`: a fog (from a meter's birth) or an operator records the firmware and
hardware version a device runs, when it changes (docs/PROTOCOL.md section 29)."""

from __future__ import annotations

from aggregator.chain.app import devices as DVS
from aggregator.chain.app import green as G
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from meterledger.wire import trace as DV

KIND = DV.DV_FIRMWARE
ROLE: str | None = None
ROLES = ("fog", "operator")  # ROLE None: the rule checks these


def check(tx: Tx, state: State) -> Effect:
    DVS.allowed(tx.sender, KIND, ROLES)
    st = G.Staged(state)
    # a fog's race (docs/PROTOCOL.md section 29) is a no-op, never a refusal that halts it
    DVS.firmware(st, tx.sender.id, tx.body, tx.digest, state.chain_time(),
             fog=tx.sender.role == "fog")
    return st.effect(tx.effect())
