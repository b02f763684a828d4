"""The dashboard's files as the services serve them (meterledger/ui/serve.py): the pages, the
bundles `make setup` built, caching, gzip, the Content-Security-Policy, and nothing outside
the manifest."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from meterledger.infra import http as H
from meterledger.ui import serve
from meterledger.ui.serve import UIError, dashboard_routes, load_assets, ui_routes


def _service(kind: str, static: Path = serve.STATIC) -> H.HTTPService:
    return H.HTTPService(f"{kind}-ui", ui_routes(kind, static))


def test_the_first_page_is_the_services_own_and_slash_ui_redirects() -> None:
    for kind, title in (("fog", b"MeterLedger fog node"), ("chain", b"MeterLedger dispatch chain")):
        s = _service(kind)
        a = s.call("GET", "/ui/")
        assert a.status == 200 and a.content_type.startswith("text/html")
        assert title in a.body and f"/ui/build/{kind}.js".encode() in a.body
        csp = a.headers["content-security-policy"]
        # the page may talk to its own origin only: no CDN, nothing sent away
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert "script-src 'self'" in csp and "http" not in csp
        r = s.call("GET", "/ui")
        assert r.status == 308 and r.headers["location"] == "/ui/"
        assert s.call("GET", "/ui/audit.html").status == 200


def test_scripts_are_served_with_an_etag_and_gzip_and_a_match_is_a_304() -> None:
    s = _service("fog")
    plain = s.call("GET", "/ui/build/fog.js")
    assert plain.status == 200 and plain.content_type.startswith("text/javascript")
    assert plain.body.startswith(b"") and len(plain.body) > 10_000  # uPlot is inside
    packed = s.call("GET", "/ui/build/fog.js", headers=[("Accept-Encoding", "gzip, br")])
    assert packed.headers["content-encoding"] == "gzip"
    assert gzip.decompress(packed.body) == plain.body and len(packed.body) < len(plain.body)
    again = s.call("GET", "/ui/build/fog.js", headers=[("If-None-Match", plain.headers["etag"])])
    assert again.status == 304 and again.body == b""
    assert s.call("GET", "/ui/build/uPlot.min.css").content_type.startswith("text/css")


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/../pyproject.toml", "/ui/%2e%2e/serve.py",
                                  "/ui/build/../../serve.py", "/ui/chain.html"])
def test_a_file_outside_the_manifest_is_a_404(path: str) -> None:
    # the fog does not serve the chain's page either
    a = _service("fog").call("GET", path)
    assert a.status == 404, (path, a.status)


def test_a_dashboard_never_built_is_refused_with_what_to_do(tmp_path: Path) -> None:
    static = tmp_path / "static"
    shutil.copytree(serve.STATIC, static, ignore=shutil.ignore_patterns("build"))
    with pytest.raises(UIError, match=r"make setup.*ui = false"):
        load_assets("fog", static)
    with pytest.raises(UIError, match="no dashboard for 'market'"):
        load_assets("market")


def test_a_page_takes_its_time_zone_and_no_other_parameter() -> None:
    s = _service("chain")
    assert s.call("GET", "/ui/?tz=Asia/Tokyo").status == 200
    assert s.call("GET", "/ui/audit.html?tz=UTC").status == 200
    assert s.call("GET", "/ui/?utm=x").status == 400


def test_the_pages_are_not_the_api_openapi_and_404s_leave_them_out() -> None:
    s = H.HTTPService("fog-ui", [H.Route("/v1/x", lambda r: {}, tier=H.PUBLIC),
                                 *ui_routes("fog")])
    paths = json.loads(s.call("GET", "/openapi.json").body)["paths"]
    assert list(paths) == ["/v1/x", "/openapi.json"]
    assert "/ui" not in s.call("GET", "/nope").body.decode()


def test_a_service_without_its_built_scripts_serves_its_api_and_says_why_not_the_pages(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    static = tmp_path / "static"
    shutil.copytree(serve.STATIC, static, ignore=shutil.ignore_patterns("build"))
    s = H.HTTPService("fog-ui", [H.Route("/v1/x", lambda r: {}, tier=H.PUBLIC),
                                 *dashboard_routes("fog", True, static)])
    assert s.call("GET", "/v1/x").status == 200
    a = s.call("GET", "/ui/")
    assert a.status == 503 and b"make setup" in a.body
    assert "the dashboard is not served" in caplog.text
    assert dashboard_routes("fog", False) == []
