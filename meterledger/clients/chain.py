"""The fog node's client of the dispatch chain's HTTP API (docs/PROTOCOL.md section 15).

The fog talks to the chain over its API only (it never imports the aggregator), so this is
a small urllib client whose errors separate "the chain is away, try again later"
(ChainUnavailable) from "the chain looked at it and said no" (ChainRefused).

`token` is sent as `Authorization: Bearer` on every request (the auditor's, for an endpoint
above the public tier); over https the server's certificate is verified against `ca_file`
(PEM), or the system's CAs without one. A 401 or 403 is a ChainClientError naming the tier
the endpoint wants, never a retry.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from meterledger import errors
from meterledger import wire as P
from meterledger.errors import ConfigError
from meterledger.wire import chain as C


class ChainClientError(errors.MeterLedgerError, RuntimeError):
    """Talking to the dispatch chain failed; the message says how."""


class ChainUnavailable(ChainClientError, errors.UnavailableError):
    """No usable answer (connection refused, timeout, 5xx): retry later."""


class ChainRefused(ChainClientError, errors.RefusedError):
    """The chain refused a transaction; `reason` is its stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def base_url_of(url: str) -> str:
    """A service's base URL as a user types it: "localhost:8090" and "10.0.0.5" mean plain
    http (the default scheme, as curl assumes); a trailing slash is dropped."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise errors.ConfigError(f"{url}: only http:// and https:// URLs are served")
    return url.rstrip("/")


def client_context(ca_file: str | Path | None) -> ssl.SSLContext | None:
    """The context that verifies a server against `ca_file`'s CA certificates (PEM), or
    None (urllib's default: the system's CAs)."""
    if not ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise errors.ConfigError(f"cannot use the CA file {ca_file}: {e}") from None


def _said(out: dict[str, Any]) -> str:
    """An error answer in one line: the fog's message, or the chain's code and detail."""
    if "detail" in out:
        return f"{out.get('error')}: {out['detail']}"
    return str(out.get("error", out))


@dataclass(frozen=True)
class Receipt:
    digest: bytes
    height: int
    index: int
    duplicate: bool = False  # the chain already held this exact transaction


class ChainClient:
    def __init__(self, base_url: str, timeout_s: float = 10.0, token: str | None = None,
                 ca_file: str | Path | None = None) -> None:
        self.base_url = base_url_of(base_url)
        self.timeout_s = timeout_s
        self.token = token
        self.context: ssl.SSLContext | None = client_context(ca_file)

    def _call(self, path: str, body: bytes | None = None,
              content_type: str = "application/cbor") -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(self.base_url + path, data=body, method="POST" if body
                                     is not None else "GET")
        if body is not None:
            req.add_header("Content-Type", content_type)
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s,
                                        context=self.context) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        except (OSError, urllib.error.URLError) as e:  # refused, reset, timeout, DNS, TLS
            raise ChainUnavailable(f"{self.base_url}{path}: {e}") from None
        if status >= 500:
            raise ChainUnavailable(f"{self.base_url}{path}: HTTP {status}")
        try:
            out = json.loads(text)
        except ValueError:
            raise ChainUnavailable(f"{self.base_url}{path}: HTTP {status} with a body that "
                                   "is not JSON") from None
        if not isinstance(out, dict):
            raise ChainUnavailable(f"{self.base_url}{path}: answer is not a JSON object")
        return status, out

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        q = f"?{urlencode(query)}" if query else ""
        status, out = self._call(path + q)
        if status != 200:
            raise ChainClientError(f"GET {path}{q}: HTTP {status}: {_said(out)}")
        return out

    def submit(self, tx: bytes) -> Receipt:
        status, out = self._call("/v1/tx", tx)
        if status in (200, 409) and "height" in out:
            return Receipt(bytes.fromhex(out["digest"]), int(out["height"]), int(out["index"]),
                           duplicate=status == 409)
        raise ChainRefused(str(out.get("error", f"http_{status}")), str(out.get("detail", "")))

    def head(self) -> dict[str, Any]:
        return self.get("/v1/head")

    def participants(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.get("/v1/participants")["participants"]
        return out

    def participant(self, id_hex: str) -> dict[str, Any] | None:
        """The registered participant `id_hex` (its role, key, name and last nonce), None if
        the chain does not know it."""
        return next((p for p in self.participants() if p.get("id") == id_hex), None)

    def anchors(self, fog_hex: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.get("/v1/anchors", fog=fog_hex)["anchors"]
        return out

    def instructions(self, fog_hex: str, after: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.get("/v1/instructions", fog=fog_hex,
                                              after=after)["instructions"]
        return out

    def tx(self, digest_hex: str) -> dict[str, Any]:
        return self.get(f"/v1/tx/{digest_hex}")

    # -- the dashboard's reads (docs/PROTOCOL.md section 15) ------------------------------------
    def _query(self, path: str, **query: Any) -> dict[str, Any]:
        return self.get(path, **{k: v for k, v in query.items() if v is not None})

    def block(self, height: int) -> dict[str, Any]:
        """GET /v1/blocks/{height}: the header, transactions and `decoded`."""
        return self.get(f"/v1/blocks/{height}")

    def blocks(self, before: int | None = None, limit: int | None = None) -> dict[str, Any]:
        """GET /v1/blocks: {"head", "blocks" (newest first), "next"}."""
        return self._query("/v1/blocks", before=before, limit=limit)

    def fogs(self, limit: int | None = None, fog_hex: str | None = None) -> list[dict[str, Any]]:
        """GET /v1/fogs: every fog that anchored, with its anchor-lag series."""
        out: list[dict[str, Any]] = self._query("/v1/fogs", limit=limit, fog=fog_hex)["fogs"]
        return out

    def dispatch(self, fog_hex: str | None = None, before: int | None = None,
                 limit: int | None = None) -> dict[str, Any]:
        """GET /v1/dispatch: {"instructions" (newest first, with reports), "next"}."""
        return self._query("/v1/dispatch", fog=fog_hex, before=before, limit=limit)

    def validators(self, commits: int | None = None) -> dict[str, Any]:
        """GET /v1/validators: the sealer, or the consortium's validators and commits."""
        return self._query("/v1/validators", commits=commits)

    def latency(self, limit: int | None = None) -> list[dict[str, Any]]:
        """GET /v1/latency: recent commit latencies, newest first."""
        out: list[dict[str, Any]] = self._query("/v1/latency", limit=limit)["latencies"]
        return out

    def suggestions(self, state: str | None = None, limit: int | None = None,
                    before: int | None = None) -> list[dict[str, Any]]:
        """GET /v1/suggestions: with the aggregates that triggered each (the newest `limit`,
        100 by default, oldest first)."""
        out: list[dict[str, Any]] = self._query("/v1/suggestions", state=state, limit=limit,
                                                before=before)["suggestions"]
        return out

    # -- green certificates (docs/PROTOCOL.md section 25) ----------------------------------------
    def params(self) -> dict[str, Any]:
        """GET /v1/params: the enabled applications' parameters, by application."""
        out: dict[str, Any] = self.get("/v1/params")["params"]
        return out

    def generators(self, after: str | None = None,
                   limit: int | None = None) -> dict[str, Any]:
        """GET /v1/generators: {"generators" (each with its `account`), "next"}."""
        return self._query("/v1/generators", after=after, limit=limit)

    def certificates(self, owner_hex: str | None = None, generator: str | None = None,
                     after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """GET /v1/certificates: {"certificates", "next"} in key order."""
        return self._query("/v1/certificates", owner=owner_hex, generator=generator,
                           after=after, limit=limit)

    def certificate(self, cid: str) -> dict[str, Any]:
        """GET /v1/certificates/{id}: the certificate, its generator and its statements."""
        return self.get(f"/v1/certificates/{quote(cid, safe='/')}")

    def balance(self, owner_hex: str) -> dict[str, Any]:
        """GET /v1/balances/{owner}: certified Wh held (`active`) and `retired`."""
        return self.get(f"/v1/balances/{owner_hex}")

    # -- the market and grid access (docs/PROTOCOL.md section 27) --------------------------------
    def market_access(self, pid_hex: str) -> dict[str, Any]:
        """GET /v1/market/access/{pid}: {"decision" (null: never applied), "enrolled"}."""
        return self.get(f"/v1/market/access/{pid_hex}")

    def market_account(self, pid_hex: str) -> dict[str, Any]:
        """GET /v1/market/accounts/{pid}: balance, held, owed (upt) and `reputation`."""
        return self.get(f"/v1/market/accounts/{pid_hex}")

    def market_enrolment(self, pid_hex: str) -> dict[str, Any] | None:
        """GET /v1/market/enrolments/{pid}: its fog, meter and line; None if not enrolled."""
        out: dict[str, Any] | None = self.get(f"/v1/market/enrolments/{pid_hex}")["enrolment"]
        return out

    def market_delivery(self, pid_hex: str, cycle: int) -> dict[str, Any]:
        """GET /v1/market/deliveries/PID/CYCLE: the participant's metered energy over a
        cycle (`delivery`: exp, imp, dur, est, statements), null before any statement."""
        return self.get(f"/v1/market/deliveries/{pid_hex}/{cycle}")

    def market_network(self) -> dict[str, Any]:
        """GET /v1/market/network: {"network" (version, lines), "operator"}."""
        return self.get("/v1/market/network")

    def market_floor(self) -> dict[str, Any]:
        """GET /v1/market/floor: {"cycle", "floor"} of the latest closed cycle."""
        return self.get("/v1/market/floor")

    def market_cycle(self, cycle: int) -> dict[str, Any]:
        """GET /v1/market/cycles/{cycle}: state, contracts, cep, low, gate, ..."""
        return self.get(f"/v1/market/cycles/{cycle}")

    def market_contracts(self, cycle: int, after: int | None = None,
                         limit: int | None = None) -> dict[str, Any]:
        """GET /v1/market/cycles/{cycle}/contracts: {"contracts", "next"} in number order."""
        return self._query(f"/v1/market/cycles/{cycle}/contracts", after=after, limit=limit)

    def market_contract(self, cycle: int, n: int) -> dict[str, Any]:
        """GET /v1/market/cycles/{cycle}/contracts/{n}: the contract and its reviews."""
        return self.get(f"/v1/market/cycles/{cycle}/contracts/{n}")

    def market_book(self, cycle: int, side: str | None = None, after: str | None = None,
                    limit: int | None = None) -> dict[str, Any]:
        """GET /v1/market/cycles/{cycle}/book: {"mode", "orders", "next"}."""
        return self._query(f"/v1/market/cycles/{cycle}/book", side=side, after=after,
                           limit=limit)

    def billing_tariff(self, name: str) -> dict[str, Any]:
        """GET /v1/billing/tariffs/{name}: {"name", "versions"}, each with its body by name,
        `tx` (the proposal) and `approved`."""
        return self.get(f"/v1/billing/tariffs/{quote(name, safe='')}")

    def billing_receipts(self, account_hex: str, after: int | None = None,
                         limit: int | None = None) -> dict[str, Any]:
        """GET /v1/billing/receipts/{account}: {"receipts" (by period start), "next"}."""
        return self._query(f"/v1/billing/receipts/{account_hex}", after=after, limit=limit)

    def device_timeline(self, dev_hex: str, after: int | None = None,
                        limit: int | None = None) -> dict[str, Any]:
        """GET /v1/devices/{dev}/timeline: {"dev", "device" (its registration and state),
        "timeline" (records in chain order, each with its `tx`), "next"}."""
        return self._query(f"/v1/devices/{dev_hex}/timeline", after=after, limit=limit)

    def billing_outages(self, meter_hex: str, lo: int | None = None,
                        hi: int | None = None) -> dict[str, Any]:
        """GET /v1/billing/outages/{meter}?from=lo&to=hi: {"meter", "outages" (each {"fault",
        "fog", "start", "end"}, by start, overlapping [lo, hi)), "truncated"}."""
        return self._query(f"/v1/billing/outages/{meter_hex}", **{"from": lo, "to": hi})

    def billing_redemptions(self, account_hex: str, lo: int | None = None,
                            hi: int | None = None) -> dict[str, Any]:
        """GET /v1/billing/redemptions/{account}?from=lo&to=hi: {"account", "redemptions"
        (each {"customer", "tx", "t", "tariff", "version", "upt", "cents"}, by chain time in
        [lo, hi)), "truncated"}."""
        return self._query(f"/v1/billing/redemptions/{account_hex}", **{"from": lo, "to": hi})

    def billing_credits(self, meter_hex: str) -> dict[str, Any]:
        """GET /v1/billing/credits/{meter}: {"meter", "credits" (each {"fault", "tx",
        "start", "end", "tariff", "version", "wh", "cents"}, by fault digest)}."""
        return self.get(f"/v1/billing/credits/{meter_hex}")

    def dr_contracts(self, customer_hex: str) -> dict[str, Any]:
        """GET /v1/dr/contracts/{customer}: {"customer", "contracts" (each its terms,
        `accept`/`accepted` once accepted, and `prefs`), "truncated"}."""
        return self.get(f"/v1/dr/contracts/{customer_hex}")

    def dr_fog_contracts(self, fog_hex: str, after: str | None = None,
                         limit: int | None = None) -> dict[str, Any]:
        """GET /v1/dr/fogs/{fog}/contracts: {"fog", "now", "contracts" (accepted, valid
        after `after`, by the end of their validity), "next"}."""
        return self._query(f"/v1/dr/fogs/{fog_hex}/contracts", after=after, limit=limit)

    def dr_events(self, fog_hex: str | None = None, after: str | None = None,
                  limit: int | None = None) -> dict[str, Any]:
        """GET /v1/dr/events: {"fog", "now" (the chain's time), "events" (by end), "next"}."""
        return self._query("/v1/dr/events", fog=fog_hex, after=after, limit=limit)

    def dr_reports(self, event_hex: str, after: str | None = None,
                   limit: int | None = None) -> dict[str, Any]:
        """GET /v1/dr/reports/{event}: {"event", "reports" (by meter), "next"}."""
        return self._query(f"/v1/dr/reports/{event_hex}", after=after, limit=limit)

    def market_commitments(self, cycle: int, after: str | None = None,
                           limit: int | None = None) -> dict[str, Any]:
        """GET /v1/market/cycles/{cycle}/commitments: {"commitments" (no digests), "next"}."""
        return self._query(f"/v1/market/cycles/{cycle}/commitments", after=after, limit=limit)


RETRIES = 5  # fresh nonces to try when a concurrent transaction took ours


@dataclass
class Sender:
    """Signs with one key and submits: its nonce the chain's last one plus one, tried again
    when a concurrent transaction of the same key took it."""

    client: ChainClient
    key: P.SigningKey
    chain_id: bytes

    def send(self, kind: str, body: dict[int, Any], t: int) -> Receipt:
        """The receipt; ChainRefused when the chain refuses it, ConfigError when the key is
        no participant of the chain."""
        for _ in range(RETRIES):
            me = self.client.participant(self.key.id_hex)
            if me is None:
                raise ConfigError(f"the key {self.key.id_hex} is no participant of the chain "
                                  f"at {self.client.base_url}: its operator registers it "
                                  f"(`meterledger chain register --role ROLE --pub "
                                  f"{self.key.public_key.raw.hex()}`)")
            raw = P.sign1(self.key, C.tx(self.key.id, int(me["nonce"]) + 1, kind, body, t,
                                         self.chain_id))
            try:
                return self.client.submit(raw)
            except ChainRefused as e:
                if e.reason != "nonce_reused":
                    raise
        raise ChainRefused("nonce_reused", f"other transactions kept taking the next nonce of "
                                           f"{self.key.id_hex} ({RETRIES} tries)")
