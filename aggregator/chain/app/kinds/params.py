"""`params`: an application's parameters, which also enable it on this chain (docs/PROTOCOL.md
section 25). Each application has one sender role (wire.certificates.APPLICATIONS) and its
versions go up by one; a version replaces the previous one's values whole."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import certificates as GC
from meterledger.wire import market as MK

KIND = GC.PARAMS
ROLE: str | None = None  # the application's own role


def check(tx: Tx, state: State) -> Effect:
    app, version, values = tx.body[1], tx.body[2], tx.body[3]
    role = GC.APPLICATIONS[app]
    if tx.sender.role != role:
        raise ChainError("not_permitted", f"the {app} parameters are set by a {role} "
                                          f"participant; {tx.sender.id.hex()} is a "
                                          f"{tx.sender.role}")
    checked = G.check_values(app, values)
    if app == "market":
        _check_market(G.effective(app, checked))
    st = G.Staged(state)
    before = st.get(G.T_PARAMS, app.encode())
    expected = 1 if before is None else before["version"] + 1
    if version != expected:
        raise ChainError("params_version", f"the next version of the {app} parameters is "
                                           f"{expected}, not {version}")
    if before is not None:
        old, new = G.effective(app, before["values"]), G.effective(app, checked)
        for name in G.FROZEN.get(app, ()):
            if old[name] != new[name]:
                raise ChainError("params_frozen", f"{app} parameter {name} is {old[name]} "
                                                  "for good: records are keyed by it")
    st.put(G.T_PARAMS, app.encode(), {"version": version, "values": checked,
                                        "tx": tx.digest})
    if app == "market":  # its sender is the grid operator: it enrols, publishes, signs
        st.put(M.T_OPERATOR, b"", tx.sender.id)
    return st.effect(tx.effect())


def _check_market(mp: dict[str, int]) -> None:
    """A sealed call clears when its reveal window ends, and its contracts are signed before
    the cycle starts: the window must end before then."""
    if mp["mode"] == MK.SEALED and mp["reveal_s"] >= mp["gate_s"]:
        raise ChainError("bad_params", f"a sealed market's reveal window (reveal_s "
                                       f"{mp['reveal_s']}) must end before its cycle starts, "
                                       f"so below gate_s {mp['gate_s']}")
