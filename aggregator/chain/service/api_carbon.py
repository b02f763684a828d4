"""The chain API's reads of the carbon application and the notaries' records (docs/PROTOCOL.md
section 26): an owner's allowance accounts per compliance period, the emitters restricted
for a deficit, a generator's per-period output and claims, a conversion's outcome, the
outbox of events the notaries relay and whether a record took effect. Public, GET, bounded;
bytes as hex."""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import carbon as K
from aggregator.chain.app import green as G
from aggregator.chain.app import notary as N
from aggregator.chain.ledger import Ledger, NotFoundError
from aggregator.chain.service.api_green import cert_id, generator_id
from aggregator.chain.service.api_reads import bad, bounded, party_id, tx_digest
from meterledger import wire as P
from meterledger.errors import ProtocolError
from meterledger.infra import http as H
from meterledger.wire import carbon as CB
from meterledger.wire.names import to_json

EVENTS = (50, 100)  # outbox events per answer (default, most): each looks its block up
PERIODS = 1000  # an owner's or generator's periods in one answer, at most


def _period_rows(rows: list[tuple[bytes, Any]]) -> list[dict[str, Any]]:
    return [{"period": int.from_bytes(k[-8:], "big"),
             **(to_json(v) if isinstance(v, dict) else {"wh": v})} for k, v in rows]


class CarbonReads:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[H.Route]:
        R, Q = H.Route, H.Param
        return [
            R("/v1/carbon/accounts/{owner}", self.accounts, tier=H.PUBLIC),
            R("/v1/carbon/generators/{gid}", self.generator, tier=H.PUBLIC),
            R("/v1/carbon/restricted", self.restricted, tier=H.PUBLIC),
            R("/v1/carbon/conversions/{cid:path}", self.conversion, tier=H.PUBLIC),
            R("/v1/notary/outbox", self.outbox, tier=H.PUBLIC, query=(
                Q("after", False, "only events numbered from this one on (an answer's "
                                  "`next`; default 0)"),
                Q("limit", False, f"events in the answer, 1 to {EVENTS[1]} (default "
                                  f"{EVENTS[0]})"))),
            R("/v1/notary/records/{subject:path}", self.record, tier=H.PUBLIC, query=(
                Q("tx", False, "the source transaction (64 hex) of a lock or outcome "
                               "record; an issue record is one per certificate"),)),
        ]

    def accounts(self, req: H.Request) -> dict[str, Any]:
        """An owner's allowances per compliance period (grams of CO2): what came in and went
        out, the balance, the fine of a settled deficit; and its restriction flag."""
        owner = party_id(req.params["owner"], "owner", "a participant id, ")
        rows = self.ledger.app_records(K.T_ACCOUNT, owner, None, PERIODS)
        periods = [{**r, "balance": K.balance(v)}
                   for r, (_, v) in zip(_period_rows(rows), rows, strict=True)]
        flag = self.ledger.app_record(K.T_RESTRICTED, owner)
        return {"owner": owner.hex(), "periods": periods,
                "restricted": None if flag is None else to_json(flag)}

    def generator(self, req: H.Request) -> dict[str, Any]:
        """A generator's verified output, emissions charged, allocations, CCER claims and
        GC-certified Wh, per compliance period."""
        gid = generator_id(req.params["gid"], "gid")
        prefix = gid.encode() + b"/"
        return {"generator": gid, **{
            name: _period_rows(self.ledger.app_records(table, prefix, None, PERIODS))
            for name, table in (("output", K.T_OUTPUT), ("allocated", K.T_ALLOCATED),
                                ("ccer", K.T_CCER), ("certified", K.T_GCWH))}}

    def restricted(self, req: H.Request) -> dict[str, Any]:
        """Emitters flagged for production restriction (a deficit at their last settled
        period), which dispatch sees."""
        rows = self.ledger.app_records(K.T_RESTRICTED, b"", None, EVENTS[1])
        return {"restricted": [{"owner": k.hex(), **to_json(v)} for k, v in rows]}

    def conversion(self, req: H.Request) -> dict[str, Any]:
        """The carbon chain's outcome of a certificate locked for conversion."""
        gid, lo, hi = cert_id(req.params["cid"])
        cid = f"{gid}/{lo}-{hi}"
        conv = self.ledger.app_record(K.T_CONV, cid.encode())
        if conv is None:
            raise H.HTTPError(404, "not_found", f"no conversion of {cid} on this chain")
        return {"certificate": cid, **to_json(conv)}

    def outbox(self, req: H.Request) -> dict[str, Any]:
        """Events for the notaries to relay, in chain order: the subject, the transaction it
        came from with its height, the values (as JSON, and as the exact CBOR to attest)."""
        q = req.query
        after = bounded(q, "after", (0, 2**62), low=0)
        limit = bounded(q, "limit", EVENTS)
        rows = self.ledger.app_records(G.T_OUT, b"", G.u64(after - 1) if after else None,
                                       limit)
        events = []
        for k, v in rows:
            try:
                height = self.ledger.tx(v["tx"]).height
            except NotFoundError:
                break  # not sealed yet (cannot happen for a stored record; never skip one)
            events.append({"seq": int.from_bytes(k, "big"), "subject": v["subject"],
                           "tx": v["tx"].hex(), "height": height,
                           "values": to_json(v["values"]),
                           "values_cbor": P.encode(v["values"]).hex()})
        nxt = events[-1]["seq"] + 1 if events else after
        return {"events": events, "next": nxt, "chain": self.ledger.chain_id.hex()}

    def record(self, req: H.Request) -> dict[str, Any]:
        """Whether a notarized record of this subject took effect here, and by whom."""
        subj = req.params["subject"]
        try:
            what, _ = CB.parse_subject(subj)
        except ProtocolError as e:
            raise bad(str(e)) from None
        tx = req.query.get("tx")
        if what == CB.ISSUE:
            if tx is not None:
                raise bad("an issue record is one per certificate: give no tx")
            key = subj.encode()
        else:
            key = subj.encode() + b"@" + tx_digest(tx or "", f"a {what} record is named by its "
                                                             "source transaction: tx")
        done = self.ledger.app_record(N.T_DONE, key)
        if done is None:
            return {"subject": subj, "applied": False}
        return {"subject": subj, "applied": True, "record": done["record"].hex(),
                "signers": [s.hex() for s in done["signers"]]}
