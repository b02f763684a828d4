"""The dashboard's pages under `/ui/` on a service's own HTTP port (docs/PROTOCOL.md section 24).

The pages are static files: HTML and CSS kept in `static/`, and the scripts `make setup`
bundles from `src/` with esbuild into `static/build/` (meterledger.ui.build). Everything a
page shows it reads in the browser from the service's JSON API, with the token the user
typed (kept in the tab's sessionStorage), so a page can show nothing its user's tier could
not read with curl. This module only serves bytes: it knows no service's data.

Every file is read once when the routes are made (a Pi serves them from memory) and
answered with an ETag (a reload that changed nothing costs a 304) and, when the browser
takes it, gzip made once. A path outside the manifest is a 404: no file system lookups per
request, so no path can reach outside the folder. The pages' Content-Security-Policy lets
them load and talk to their own origin only: no CDN, no third party, nothing sent away.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from meterledger.infra import http as H
from meterledger.infra.http import PUBLIC

__all__ = ["PAGES", "Asset", "UIError", "dashboard_routes", "load_assets", "ui_routes"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
BUILD = STATIC / "build"
# the pages each service serves; the first is its `/ui/`
PAGES = {"fog": ("fog.html", "audit.html"), "chain": ("chain.html", "audit.html")}
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".json": "application/json",
          ".svg": "image/svg+xml", ".png": "image/png", ".map": "application/json"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'none'; "
        "frame-ancestors 'none'; base-uri 'none'")
_MIN_GZIP = 1024  # smaller files are sent as they are


class UIError(H.HTTPServiceError):
    """The dashboard cannot be served; the message says what is missing."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def _asset(path: Path) -> Asset:
    body = path.read_bytes()
    packed = gzip.compress(body, 9, mtime=0) if len(body) >= _MIN_GZIP else None
    return Asset(body, packed if packed is not None and len(packed) < len(body) else None,
                 _TYPES.get(path.suffix, "application/octet-stream"),
                 '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


def load_assets(service: str, static: Path = STATIC) -> dict[str, Asset]:
    """Every file one service's dashboard serves, by its path under /ui/ ("" is the page
    `/ui/` answers). UIError when the scripts were never built (`make setup` builds them)."""
    if service not in PAGES:
        raise UIError(f"no dashboard for {service!r}: there are {', '.join(PAGES)}")
    build = static / "build"
    if not all((build / page.replace(".html", ".js")).is_file() for page in PAGES[service]):
        raise UIError(f"the dashboard's scripts are not built ({build}): run `make setup` "
                      "(or `python -m meterledger.ui.build`), or set ui = false")
    out: dict[str, Asset] = {}
    pages = PAGES[service]
    for name in pages:
        out[name] = _asset(static / name)
    out[""] = out[pages[0]]
    for path in sorted(static.rglob("*")):
        rel = path.relative_to(static).as_posix()
        if path.is_file() and not rel.endswith(".html") and not rel.startswith("."):
            out[rel] = _asset(path)
    return out


def _answer(asset: Asset, req: H.Request) -> H.Reply:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache",
               "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
    if asset.content_type.startswith("text/html"):
        headers.update({"Content-Security-Policy": _CSP, "Referrer-Policy": "no-referrer",
                        "X-Frame-Options": "DENY"})
    if req.headers.get("if-none-match") == asset.etag:
        return H.Reply(b"", 304, asset.content_type, headers)
    if asset.gzipped is not None and "gzip" in req.headers.get("accept-encoding", ""):
        return H.Reply(asset.gzipped, 200, asset.content_type,
                       {**headers, "Content-Encoding": "gzip"})
    return H.Reply(asset.body, 200, asset.content_type, headers)


def ui_routes(service: str, static: Path = STATIC) -> list[H.Route]:
    """The routes of `service`'s dashboard ("fog" or "chain"): `/ui` (a redirect), `/ui/`
    and every file under it, all public (the pages hold no data)."""
    assets = load_assets(service, static)

    def redirect(req: H.Request) -> H.Reply:
        """The dashboard: a redirect to /ui/."""
        return H.Reply(b"", 308, "text/plain", {"Location": "/ui/"})

    def index(req: H.Request) -> H.Reply:
        """The dashboard's first page (HTML)."""
        return _answer(assets[""], req)

    def file(req: H.Request) -> H.Reply:
        """A file of the dashboard: a page, a script, a style sheet."""
        asset = assets.get(req.params["file"])
        if asset is None:
            raise H.HTTPError(404, "not_found", f"no file /ui/{req.params['file'][:80]} in "
                                                "the dashboard")
        return _answer(asset, req)

    # the pages read ?tz= themselves (the time zone they show); the server takes it and
    # ignores it, and refuses any other parameter as every route does
    tz = (H.Param("tz", False, "an IANA time zone the page shows times in (default: the "
                               "browser's)"),)
    return [H.Route("/ui", redirect, tier=PUBLIC, content_type="text/plain", api=False),
            H.Route("/ui/", index, tier=PUBLIC, content_type="text/html", query=tz, api=False),
            H.Route("/ui/{file:path}", file, tier=PUBLIC, content_type="text/html", query=tz,
                    api=False)]


def dashboard_routes(service: str, enabled: bool, static: Path = STATIC) -> list[H.Route]:
    """What a service adds to its API for its `ui` setting: nothing when off; the dashboard;
    or, when its scripts were never built, `/ui/` answering 503 with what to do (logged
    once at start): a missing dashboard must not keep a fog or a validator from serving."""
    if not enabled:
        return []
    try:
        return ui_routes(service, static)
    except UIError as e:
        log.warning("the dashboard is not served: %s", e)
        reason = str(e)

    def unbuilt(req: H.Request) -> H.Reply:
        """The dashboard, which is not built here: 503 and why."""
        raise H.HTTPError(503, "unavailable", reason)

    return [H.Route(path, unbuilt, tier=PUBLIC, api=False)
            for path in ("/ui", "/ui/", "/ui/{file:path}")]
