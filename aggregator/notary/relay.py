"""A notary: relays the records of the GC chain and the carbon chain to each other
(docs/PROTOCOL.md section 26), over their HTTP APIs only.

Each chain keeps an outbox of numbered events (a certificate issued, a certificate locked
for conversion, a conversion's outcome). A notary reads each outbox from its cursor and
posts its share of each event to the peer chain: an `attest` transaction signed with its
own key, naming the source chain, the height and digest of the source transaction, the
subject and the values. The peer applies a record at the k-th share of distinct notaries
and refuses any share after that (`record_applied`), so the relay is at-least-once and the
effect exactly-once: the cursor (a SQLite file) moves past an event once the peer took the
share, said it needs no more of it, or the event was kept aside to be retried (a refusal
that may pass: it never holds up the events after it); a notary killed at any point
resumes from its cursor and its kept events, and repeats nothing harmful.

An issuance's values are computed here, the same way by every honest notary: the
certificate's Wh per compliance period of the carbon chain (its statements' intervals, the
carbon chain's start and period_s), so the carbon chain can hold it against CCER claims.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterledger import wire as P
from meterledger.clients.chain import ChainClient, ChainClientError, ChainRefused, Sender
from meterledger.errors import ConfigError
from meterledger.infra.sqlite import connect
from meterledger.wire import carbon as CB

log = logging.getLogger("meterledger.notary")

# a share the peer no longer needs: the record took effect, or this notary's share is in
DONE = ("record_applied", "attest_repeated")
BATCH = 100  # events read from an outbox per request
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (chain TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (chain TEXT NOT NULL, seq INTEGER NOT NULL,
                                    event TEXT NOT NULL, PRIMARY KEY (chain, seq));
"""


class RelayError(Exception):
    """An event this notary cannot relay yet (the peer is down, or refused it for a reason
    that may pass); it is retried from the same place."""


def periods_of(statements: list[dict[str, Any]], lo: int, hi: int,
               carbon: dict[str, int]) -> list[list[int]]:
    """A certificate's Wh [lo, hi) per compliance period of the carbon chain, from the
    statements (segments [lo, hi) of the generator's count, with the interval each ends)
    it was issued from; ascending by period."""
    per: dict[int, int] = {}
    for s in statements:
        wh = min(hi, int(s["hi"])) - max(lo, int(s["lo"]))
        if wh <= 0:
            continue
        p = CB.period_of(carbon["start"], carbon["period_s"], int(s["ivl"]))
        if p >= 0:
            per[p] = per.get(p, 0) + wh
    return [[p, per[p]] for p in sorted(per)]


@dataclass
class Side:
    """One chain as a notary sees it: its API and its id."""

    name: str
    client: ChainClient
    chain_id: bytes

    @classmethod
    def of(cls, name: str, client: ChainClient) -> Side:
        return cls(name, client, bytes.fromhex(client.head()["chain"]))


class Notary:
    """One notary's relay between the GC chain and the carbon chain."""

    def __init__(self, key: P.SigningKey, gc: Side, carbon: Side, db_path: Path,
                 clock: Callable[[], float]) -> None:
        self.key = key
        self.clock = clock  # the `t` of its transactions (the chains' rules never read it)
        self.gc, self.carbon = gc, carbon
        self.db = connect(db_path)
        self.db.executescript(_SCHEMA)
        self._said: dict[str, str] = {}  # the last problem logged per direction
        self._periods: dict[str, int] | None = None  # the carbon chain's start, period_s

    def close(self) -> None:
        self.db.close()

    def cursor(self, side: Side) -> int:
        row = self.db.execute("SELECT next FROM cursor WHERE chain = ?",
                              (side.chain_id.hex(),)).fetchone()
        return int(row[0]) if row else 0

    def _advance(self, side: Side, nxt: int) -> None:
        self.db.execute("INSERT INTO cursor (chain, next) VALUES (?, ?) ON CONFLICT(chain) "
                        "DO UPDATE SET next = excluded.next", (side.chain_id.hex(), nxt))

    def step(self) -> int:
        """Relay what both outboxes hold past the cursors; the shares posted."""
        return self.relay(self.gc, self.carbon) + self.relay(self.carbon, self.gc)

    def relay(self, source: Side, target: Side) -> int:
        """Post a share of each event of `source`'s outbox to `target`, in order. An event
        the peer cannot take yet (a refusal that may pass, a certificate not readable) is
        kept aside and retried at every pass, without holding up the events after it; an
        unreachable chain stops the pass where it is."""
        sent = 0
        try:
            for seq, text in self.db.execute(
                    "SELECT seq, event FROM pending WHERE chain = ? ORDER BY seq",
                    (source.chain_id.hex(),)).fetchall():
                if self._try(source, target, json.loads(text)) is None:
                    continue
                sent += 1
                self.db.execute("DELETE FROM pending WHERE chain = ? AND seq = ?",
                                (source.chain_id.hex(), seq))
            out = source.client.get("/v1/notary/outbox", after=self.cursor(source),
                                    limit=BATCH)
            for ev in out["events"]:
                posted = self._try(source, target, ev)
                if posted is None:
                    self.db.execute("INSERT OR IGNORE INTO pending (chain, seq, event) VALUES "
                                    "(?, ?, ?)", (source.chain_id.hex(), int(ev["seq"]),
                                                  json.dumps(ev, sort_keys=True)))
                sent += posted or 0
                self._advance(source, int(ev["seq"]) + 1)
        except ChainClientError as e:
            self._say(f"{source.name}->{target.name}", f"relaying paused: {e}")
            return sent
        self._said.pop(f"{source.name}->{target.name}", None)
        return sent

    def _try(self, source: Side, target: Side, ev: dict[str, Any]) -> int | None:
        """The shares posted for `ev` (0: the peer needs none), None if it must wait."""
        try:
            return self._share(source, target, ev)
        except RelayError as e:
            self._say(f"{source.name}#{ev.get('seq')}", f"event {ev.get('seq')} of the "
                                                         f"{source.name} chain waits: {e}")
            return None

    def _say(self, what: str, text: str) -> None:
        if self._said.get(what) != text:  # once per problem, not at every pass
            log.warning("notary %s: %s", self.key.id_hex, text)
            self._said[what] = text

    def _share(self, source: Side, target: Side, ev: dict[str, Any]) -> int:
        try:
            subj = str(ev["subject"])
            what, cid = CB.parse_subject(subj)
            values: dict[str, Any] = P.decode(bytes.fromhex(ev["values_cbor"]))
            height, tx = int(ev["height"]), bytes.fromhex(ev["tx"])
            if what == CB.ISSUE:
                values = self._issue_values(source, target, cid, values)
        except (KeyError, TypeError, ValueError) as e:  # ProtocolError is a ValueError
            raise RelayError(f"the {source.name} chain's event is malformed: {e}") from None
        if not values:
            return 0  # nothing of it falls in a compliance period: nothing to relay
        body = CB.attest_body(source.chain_id, height, tx, subj, values)
        try:
            Sender(target.client, self.key, target.chain_id).send(CB.ATTEST, body,
                                                                  int(self.clock()))
        except ConfigError:
            raise RelayError(f"this notary ({self.key.id_hex}) is not registered on the "
                             f"{target.name} chain") from None
        except ChainRefused as e:
            if e.reason in DONE:
                return 0
            raise RelayError(f"the {target.name} chain refused {subj}: {e}") from None
        log.info("notary %s: attested %s on the %s chain", self.key.id_hex, subj, target.name)
        return 1

    def _issue_values(self, source: Side, target: Side, cid: str,
                      values: dict[str, Any]) -> dict[str, Any]:
        cert = source.client.certificate(cid)
        if cert["truncated"]:
            raise RelayError(f"certificate {cid} has more statements than one answer holds")
        if self._periods is None:  # start and period_s never change once set: read once
            carbon = target.client.params().get("carbon")
            if carbon is None:
                raise RelayError(f"the {target.name} chain has not enabled the carbon "
                                 "application")
            self._periods = {k: int(carbon["effective"][k]) for k in ("start", "period_s")}
        c = cert["certificate"]
        parts = periods_of(cert["statements"], int(c["lo"]), int(c["hi"]), self._periods)
        if not parts:
            return {}  # all of it before the carbon chain's first period
        if len(parts) > CB.PARTS_MAX:
            raise RelayError(f"certificate {cid} spans {len(parts)} compliance periods "
                             f"(at most {CB.PARTS_MAX} can be relayed)")
        # start and period_s never change once set (params_frozen): every notary computes
        # the same periods, whenever it does
        return {"gen": values["gen"], "periods": parts}
