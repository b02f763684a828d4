"""`anchor`: a fog puts its side-chain checkpoints (and the aggregates they commit to, and the
energy statements of its generator meters) on the chain; the SPEC section 8 rule is
`meterledger.wire.anchor.checked_anchor`; statements issue certificates (app.green)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aggregator.chain.app import carbon as K
from aggregator.chain.app import green as G
from aggregator.chain.app import market_cycle as MC
from aggregator.chain.app.kinds.base import Tx
from aggregator.chain.app.state import INT64_MAX, Effect, State, StateWriter
from aggregator.chain.ledger import FOG, CarriedAggregate, ChainError, Receipt, refuse
from meterledger.errors import ProtocolError
from meterledger.wire import anchor as A
from meterledger.wire import chain as C

KIND = C.ANCHOR
ROLE: str | None = FOG


@dataclass(frozen=True)
class Anchors(G.Writes):
    """The anchor itself and its aggregates; `writes` are the energy statements' records
    and the certificates they issued (app.green)."""

    first: int  # height of the first checkpoint carried
    head: A.AnchoredHead  # the newest one carried
    aggregates: tuple[CarriedAggregate, ...]

    def apply(self, w: StateWriter, at: Receipt | None) -> None:
        w.put_anchor(self.sender, at, self.digest, self.first, self.head)
        for pos, a in enumerate(self.aggregates):
            w.put_aggregate(self.sender, at, pos, a)
        super().apply(w, at)

    def stored_ints(self) -> Iterable[int]:
        return (self.nonce, self.head.size, self.head.t,
                *(v for a in self.aggregates for v in (a.ivl, a.rev)))


def check(tx: Tx, state: State) -> Effect:
    fog = tx.sender.id

    def carried(d: bytes) -> bool:  # carried by an earlier anchor of this fog
        return state.aggregate_fog(d) == fog

    try:
        checked = A.checked_anchor(tx.body, tx.sender_key, state.anchored(fog), carried)
    except ProtocolError as err:
        raise refuse(err) from None
    cps = checked.checkpoints
    head = A.AnchoredHead.of(cps[-1])
    big = [v for a in checked.aggregates for v in (a.fields[2], a.fields[16]) if v > INT64_MAX]
    if max(head.size, head.t) > INT64_MAX or big:
        raise ChainError("bad_fields", "the newest checkpoint's size or t, or an aggregate's "
                                       "ivl or rev, is beyond 2^63-1, which this chain does "
                                       "not store")
    # an aggregate is signed by the fog that carries it, so no other fog's anchor can have
    # carried the same bytes: `carried` covers every earlier copy
    st = G.Staged(state)
    G.record_statements(st, fog, tx.digest, checked.statements)
    K.record_outputs(st, fog, checked.statements)
    MC.record_deliveries(st, fog, tx.digest, checked.statements)
    return Anchors(*tx.effect().common(), tuple(st.writes), cps[0].fields[2], head,
                   tuple(CarriedAggregate.of(a) for a in checked.aggregates))
