"""The HTTP settings every service shares (TLS, limits), one definition for the fog's and the
chain node's configs: each inherits them and may change a default or a help text.
docs/PROTOCOL.md sections 12 and 15 describe them."""

from __future__ import annotations

from dataclasses import dataclass

from meterledger.infra.config import setting
from meterledger.infra.http_transport import TLS, Limits

__all__ = ["HTTPSettings"]


@dataclass
class HTTPSettings:
    http_tls_cert: str = setting("", help="PEM certificate (chain) the HTTP API serves TLS "
                                          "with; empty (with http_tls_key): plain HTTP")
    http_tls_key: str = setting("", help="PEM private key of http_tls_cert")
    http_max_body: int = setting(64 * 1024, help="largest request body the API reads (bytes)",
                                 min=1024, max=16 * 1024 * 1024)
    http_max_head: int = setting(64 * 1024, help="largest request line and headers (bytes)",
                                 min=1024, max=1024 * 1024)
    http_request_timeout_s: float = setting(10.0, help="a request must arrive whole within "
                                                       "this many seconds (slow clients are "
                                                       "closed)", min=0.05, max=600)
    http_idle_timeout_s: float = setting(30.0, help="seconds a kept-alive connection may sit "
                                                    "idle", min=0.05, max=3600)
    http_handler_timeout_s: float = setting(30.0, help="seconds a client waits for an answer "
                                                       "before a 503", min=0.05, max=3600)
    http_max_connections: int = setting(256, help="open HTTP connections at most; more wait "
                                                  "to be accepted", min=1, max=65535)

    ui: bool = setting(True, help="serve the web dashboard under /ui/ on the HTTP port (its "
                                  "pages read the same API with the user's token); false: "
                                  "the API only")

    def http_limits(self) -> Limits:
        return Limits(max_body=self.http_max_body, max_head=self.http_max_head,
                      request_timeout_s=self.http_request_timeout_s,
                      idle_timeout_s=self.http_idle_timeout_s,
                      handler_timeout_s=self.http_handler_timeout_s,
                      max_connections=self.http_max_connections)

    def http_tls(self) -> TLS | None:
        return TLS.of(self.http_tls_cert, self.http_tls_key)
