"""The chain API's reads of the green-certificate application (docs/PROTOCOL.md section 25):
applications' parameters, generators with their certified energy, certificates (by owner,
by generator, one with the statements it was issued from) and balances. Public, GET, every
list bounded and paged by key; bytes as hex."""

from __future__ import annotations

from typing import Any

from aggregator.chain.app import green as G
from aggregator.chain.ledger import Ledger
from aggregator.chain.service.api_reads import bad, bounded, optional_id, party_id
from meterledger.errors import ProtocolError
from meterledger.infra import http as H
from meterledger.wire import certificates as GC
from meterledger.wire.names import to_json

CERTS = (100, 1000)  # certificates per answer (default, most)
GENERATORS = (100, 1000)
STATEMENTS = 20_000  # a certificate's statements in one answer, at most
def generator_id(text: str, name: str) -> str:
    """A generator's id (a path part or query value called `name`); 400 otherwise."""
    if not GC.GENERATOR_ID.fullmatch(text):
        raise bad(f"{name} must be a generator id (a-z 0-9 . _ -, 1-32), not {H.show(text)}")
    return text


def _generator(q: H.Query) -> str | None:
    text = q.get("generator")
    return None if text is None else generator_id(text, "generator")


def cert_id(text: str) -> tuple[str, int, int]:
    """(generator, lo, hi) of a certificate id; 400 otherwise."""
    try:
        return GC.parse_certificate_id(text)
    except ProtocolError as e:
        raise bad(str(e)) from None


def certificate_json(c: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = to_json(c)
    out["wh"] = c["hi"] - c["lo"]
    return out


class GreenReads:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[H.Route]:
        R, Q = H.Route, H.Param
        after = Q("after", False, "page on: only what comes after this id in key order (an "
                                  "answer's `next`)")
        return [
            R("/v1/params", self.params, tier=H.PUBLIC),
            R("/v1/generators", self.generators, tier=H.PUBLIC, query=(
                after, Q("limit", False, f"generators in the answer, 1 to {GENERATORS[1]} "
                                         f"(default {GENERATORS[0]})"))),
            R("/v1/certificates", self.certificates, tier=H.PUBLIC, query=(
                Q("owner", False, "only this participant's certificates (16 hex characters)"),
                Q("generator", False, "only this generator's certificates"),
                after, Q("limit", False, f"certificates in the answer, 1 to {CERTS[1]} "
                                         f"(default {CERTS[0]})"))),
            R("/v1/certificates/{cid:path}", self.certificate, tier=H.PUBLIC),
            R("/v1/balances/{owner}", self.balance, tier=H.PUBLIC),
        ]

    def params(self, req: H.Request) -> dict[str, Any]:
        """The enabled applications and their parameters (a version replaces the last):
        `values` as set, `effective` with the defaults of those not set."""
        out = {}
        for k, v in self.ledger.app_records(G.T_PARAMS):
            app = k.decode()
            defaults = {n: d for n, (_, _, d) in G.PARAMETERS.get(app, {}).items()}
            out[app] = {**to_json(v), "effective": {**defaults, **v["values"]}}
        return {"params": out}

    def generators(self, req: H.Request) -> dict[str, Any]:
        """Registered generators, by id, each with its certified energy (`account`, Wh)."""
        limit = bounded(req.query, "limit", GENERATORS)
        start = req.query.get("after")
        rows = self.ledger.app_records(G.T_GEN, after=start.encode() if start else None,
                                       limit=limit)
        out = []
        for key, g in rows:
            acct = self.ledger.app_record(G.T_ACCOUNT, key)
            out.append({"id": key.decode(), **to_json(g), "account": acct or {
                "certified": 0, "issued": 0, "estimated": 0, "refused": 0, "statements": 0,
                "dur": 0}})
        return {"generators": out,
                "next": out[-1]["id"] if len(out) == limit else None}

    def certificates(self, req: H.Request) -> dict[str, Any]:
        """Certificates in key order (generator, then Wh range): all, one owner's (active,
        retired) or one generator's (every state, splits too)."""
        q = req.query
        limit = bounded(q, "limit", CERTS)
        owner, gen = optional_id(q, "owner", "a participant id, "), _generator(q)
        if owner is not None and gen is not None:
            raise bad("give owner or generator, not both")
        start = q.get("after")
        after_key = G.cert_key(*cert_id(start)) if start else None
        if owner is not None:
            keys = self.ledger.app_records(G.T_OWNED, owner,
                                           owner + after_key if after_key else None, limit)
            # read one by one: a transfer in between leaves one out (its `next` still pages on)
            pairs = [(k[8:], self.ledger.app_record(G.T_CERT, k[8:])) for k, _ in keys]
        else:
            prefix = gen.encode() + b"/" if gen else b""
            pairs = self.ledger.app_records(G.T_CERT, prefix, after_key, limit)
        out = [certificate_json(c) for _, c in pairs if c is not None]
        nxt = None
        if len(pairs) == limit:
            g, lo, hi = pairs[-1][0][:-17].decode(), pairs[-1][0][-16:-8], pairs[-1][0][-8:]
            nxt = GC.certificate_id(g, int.from_bytes(lo, "big"), int.from_bytes(hi, "big"))
        return {"certificates": out, "next": nxt}

    def certificate(self, req: H.Request) -> dict[str, Any]:
        """One certificate with the energy statements it was issued from: each statement's
        digest, interval, the Wh of the generator's count it holds and the anchor that
        carried it (the certificate's Wh are those of its range within them)."""
        gid, lo, hi = cert_id(req.params["cid"])
        cert = self.ledger.app_record(G.T_CERT, G.cert_key(gid, lo, hi))
        if cert is None:
            raise H.HTTPError(404, "not_found", f"no certificate {gid}/{lo}-{hi}")
        prefix = gid.encode() + b"/"
        segs = self.ledger.app_records(G.T_SEGMENT, prefix, prefix + G.u64(lo), STATEMENTS)
        statements = []
        for key, s in segs:
            if s["lo"] >= hi:
                break
            statements.append({"digest": s["digest"].hex(), "ivl": s["ivl"], "lo": s["lo"],
                               "hi": int.from_bytes(key[-8:], "big"),
                               "anchor": s["anchor"].hex()})
        gen = self.ledger.app_record(G.T_GEN, gid.encode())
        return {"certificate": certificate_json(cert), "generator": to_json(gen),
                "statements": statements,
                "truncated": bool(statements) and statements[-1]["hi"] < hi}

    def balance(self, req: H.Request) -> dict[str, Any]:
        """A participant's certified Wh: active (held) and retired."""
        owner = party_id(req.params["owner"], "owner", "a participant id, ")
        bal = self.ledger.app_record(G.T_BALANCE, owner)
        return {"owner": owner.hex(), **(bal or {"active": 0, "retired": 0})}
