"""`mk_network`: the grid operator publishes the network its security check runs on (001
s3.3): a radial tree of lines (feeders, transformers, lines) with capacities and the
redispatch cost that becomes a congested line's fee. A version replaces the previous one
whole (never without a line a participant is enrolled on); the cycles already matched keep
their flows."""

from __future__ import annotations

from aggregator.chain.app import green as G
from aggregator.chain.app import market as M
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import Effect, State
from aggregator.chain.ledger import ChainError
from meterledger.wire import market as MK

KIND = MK.MK_NETWORK
ROLE: str | None = "dispatch"


def check(tx: Tx, state: State) -> Effect:
    st = G.Staged(state)
    G.enabled(st, "market", KIND)
    if tx.sender.id != M.operator(st):
        raise ChainError("not_permitted", f"the grid operator {M.operator(st).hex()} "
                                          f"publishes the network, not {tx.sender.id.hex()}")
    before = st.get(M.T_NETWORK, b"")
    expected = 1 if before is None else before["version"] + 1
    if tx.body[1] != expected:
        raise ChainError("network_version", f"the next network version is {expected}, not "
                                            f"{tx.body[1]}")
    lines = sorted([list(MK.parse_line(x)) for x in tx.body[2]])
    ids = {x[0] for x in lines}
    for pid, e in st.scan(M.T_ENROLLED, b""):  # a participant's line is where its trades run
        if e["line"] not in ids:
            raise ChainError("line_in_use", f"line {e['line']} connects {pid.hex()}: a network "
                                            "version keeps every line a participant is "
                                            "enrolled on")
    st.put(M.T_NETWORK, b"", {"version": tx.body[1], "lines": lines, "tx": tx.digest})
    return st.effect(tx.effect())
