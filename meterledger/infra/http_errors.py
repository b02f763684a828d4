"""The one error envelope of the services' JSON APIs (meterledger.infra.http): `HTTPError`,
the answer other than success a handler raises, and `Errors`, how an API words the
refusals the layer itself answers (unknown path, wrong method, bad query, too large, too
slow, no or a lower tier's token, a handler out of time, the 500); and `Query`, a request's
query string checked against what its route takes (a 400 in the API's words).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from meterledger.errors import MeterLedgerError
from meterledger.infra.http_auth import Tier

__all__ = ["Errors", "HTTPError", "Query", "json_body", "show"]


class HTTPError(MeterLedgerError):
    """An answer other than success, in the one envelope: a JSON object with `error`, a
    `detail` when there is one, and any `fields` (e.g. the receipt of a duplicate)."""

    def __init__(self, status: int, error: str, detail: str | None = None, *,
                 headers: Mapping[str, str] | None = None, **fields: Any) -> None:
        super().__init__(detail if detail is not None else error)
        self.status = status
        self.error = error
        self.detail = detail
        self.fields = fields
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error}
        if self.detail is not None:
            out["detail"] = self.detail
        out.update(self.fields)
        return out


def json_body(doc: Mapping[str, Any]) -> bytes:
    """The bytes of a JSON answer: json.dumps' default separators and a newline."""
    return json.dumps(doc).encode() + b"\n"


def show(value: str) -> str:
    """A client's value quoted for an error message, cut short if it is long."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


class Errors:
    """How an API words the errors the layer itself answers.

    Every refusal goes through `make(status, code, message)`; the default envelope is the
    aggregator's, ``{"error": code, "detail": message}``. An API whose clients read the
    message in `error` overrides `make` (and any text it words differently).
    """

    def make(self, status: int, code: str, message: str | None, *,
             headers: Mapping[str, str] | None = None) -> HTTPError:
        return HTTPError(status, code, message, headers=headers)

    def bad_request(self, message: str) -> HTTPError:
        return self.make(400, "bad_request", message)

    def not_found(self, method: str, path: str, known: Sequence[str]) -> HTTPError:
        return self.make(404, "not_found",
                         f"no endpoint {show(path)}; the API has {', '.join(known)}")

    def not_allowed(self, method: str, path: str, allowed: Sequence[str]) -> HTTPError:
        return self.make(405, "method_not_allowed",
                         f"method {method} is not allowed on {show(path)}: it answers "
                         f"{', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})

    def too_large(self, size: int | None, limit: int) -> HTTPError:
        what = f"{size} bytes" if size is not None else "longer"
        return self.make(413, "too_large", f"the request body is {what}, more than the "
                         f"{limit} bytes this API takes", headers={"Connection": "close"})

    def malformed(self, status: int, message: str) -> HTTPError:
        """A request that is not HTTP the server can read (answered before any route)."""
        return self.make(status, "bad_request", message)

    def too_slow(self, message: str) -> HTTPError:
        """408: a request that did not arrive whole in time (the connection then closes)."""
        return self.make(408, "request_timeout", message)

    def unauthorized(self, tier: Tier, realm: str, presented: bool) -> HTTPError:
        """401: no token, or (`presented`) one the API does not know."""
        challenge = f'Bearer realm="{realm}"' + (', error="invalid_token"' if presented else "")
        what = ("the token given is not one of this API's" if presented else "no token given")
        return self.make(401, "unauthorized", f"this endpoint needs the {tier.label} token "
                         f"(Authorization: Bearer TOKEN): {what}",
                         headers={"WWW-Authenticate": challenge})

    def forbidden(self, tier: Tier, have: Tier, realm: str) -> HTTPError:
        """403: a known token of a tier below the endpoint's."""
        return self.make(403, "forbidden", f"this endpoint needs the {tier.label} token; "
                         f"the one given is the {have.label} token",
                         headers={"WWW-Authenticate": f'Bearer realm="{realm}", '
                                                      f'error="insufficient_scope"'})

    def handler_timeout(self, seconds: float) -> HTTPError:
        """503: the handler did not answer within the service's handler time limit."""
        return self.make(503, "timeout", f"the answer took longer than {seconds:g} s; try "
                         "again later", headers={"Retry-After": "1"})

    def internal(self) -> HTTPError:
        return HTTPError(500, "internal")


class Query:
    """One request's query string: each parameter at most once, none the route does not
    take; values are the query's text as parsed (percent-escapes decoded, UTF-8, '+')."""

    def __init__(self, raw: str, allowed: Sequence[str], errors: Errors) -> None:
        self.errors = errors
        self.values: dict[str, str] = {}
        for name, value in parse_qsl(raw, keep_blank_values=True):
            if name not in allowed:
                takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
                raise errors.bad_request(f"unknown parameter {show(name)}: this endpoint {takes}")
            if name in self.values:
                raise errors.bad_request(f"parameter {name} is given more than once")
            self.values[name] = value

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def text(self, name: str) -> str:
        if name not in self.values:
            raise self.errors.bad_request(f"missing parameter {name}")
        return self.values[name]
