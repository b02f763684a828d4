"""The dashboard in a real headless Chromium (Playwright) against a running demo stack: the
broker, the chain, the fog and firmware meters as real processes (tools.browser). Each page
renders the stack's data, plots have the points the API gives, enrollment and approval work
through the page with a token and are refused without one, and the audit page shows the
check a tampered bundle fails, computed in the browser."""

from __future__ import annotations

import json
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from hardware.virtual_meter import VirtualClock, VirtualMeter, make_meter
from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.clients.fog import FogClient
from tests.kit.fogkit import wait
from tools import audit
from tools.browser import Stack, demo_stack
from tools.screenshots import WAIT_MS, loaded_again, open_section

pytestmark = pytest.mark.browser

FOG_SECTIONS = ("overview", "meters", "feeders", "vee", "checkpoints", "bus", "rejections")
CHAIN_SECTIONS = ("overview", "blocks", "participants", "anchors", "dispatch")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with demo_stack(tmp_path_factory.mktemp("ui") / "demo") as s:
        yield s


def fog(stack: Stack, tier: str = "auditor") -> FogClient:
    return FogClient(stack.fog_url, token=stack.auditor if tier == "auditor" else
                     stack.fog_operator)


# -- the fog's page ---------------------------------------------------------------------------
@pytest.mark.parametrize("section", FOG_SECTIONS)
def test_every_fog_section_renders_the_stacks_data(stack: Stack, page: Page, section: str) -> None:
    open_section(page, stack.fog_url, "", section, stack.auditor)
    body = page.locator(f"section#{section}")
    assert body.get_attribute("data-error") is None
    assert body.inner_text().strip()


def test_fog_meters_are_the_apis_and_need_the_auditor_token(stack: Stack, page: Page) -> None:
    page.goto(f"{stack.fog_url}/ui/#meters")
    # no token: the page says what it needs, and shows no meter
    page.wait_for_selector("section#meters[data-error='401']", state="attached",
                           timeout=WAIT_MS)
    assert "token" in page.inner_text("section#meters .status")
    assert page.locator("section#meters tbody tr").count() == 0
    page.fill("#token", stack.auditor)
    page.click("#token-form button")
    page.wait_for_selector("section#meters[data-loaded]:not([data-error])", state="attached",
                           timeout=WAIT_MS)
    active = [m["dev"] for m in fog(stack).meters()["meters"] if m["state"] == "active"]
    for dev in active:
        assert page.locator(f"section#meters .list tr[data-key='{dev}']").count() == 1


def drawn_as_answered(page: Page, section: str, path: str, figure: str,
                      points: Callable[[dict[str, Any]], int]) -> None:
    """One poll of `section`: the answer the page got from `path` and the points it then
    drew in `figure` agree. The data moves between polls (an interval closes every few
    seconds), so the page is compared with its own answer, not with a later one; a poll
    that lands in between (a descheduled test thread) is retried."""
    def loads() -> int:
        return int(page.get_attribute(f"section#{section}", "data-loaded") or 0)

    for _ in range(5):
        before = loads()
        with page.expect_response(lambda r: path in r.url, timeout=WAIT_MS) as answer:
            pass
        expected = points(answer.value.json())
        wait(partial(lambda n: loads() > n, before), timeout=60,
             what=f"section {section} drawn", every=0.1)
        if page.get_attribute(figure, "data-points") == str(expected):
            assert expected > 0
            return
    raise AssertionError(f"{figure} never showed the points of the answer it got")


def test_a_feeder_plot_has_the_points_the_api_gives(stack: Stack, page: Page) -> None:
    open_section(page, stack.fog_url, "", "feeders", "")  # public: no token needed
    feeders = fog(stack).feeders(limit=96)["feeders"]
    assert feeders, "the demo's fog has feeders"
    name = feeders[0]["feeder"]
    drawn_as_answered(page, "feeders", "/v1/feeders", f"figure[data-feeder='{name}']",
                      lambda doc: len(next(f for f in doc["feeders"]
                                           if f["feeder"] == name)["points"]))
    assert page.locator(f"figure[data-feeder='{name}'] canvas").count() == 1


def test_the_overview_updates_without_a_reload(stack: Stack, page: Page) -> None:
    open_section(page, stack.fog_url, "", "overview", "")
    first = int(page.inner_text("#cp-height .n"))
    wait(lambda: int(page.inner_text("#cp-height .n")) > first, timeout=120,
         what="a newer checkpoint on the page, polled without a reload", every=0.5)


def test_times_are_shown_in_the_operators_zone(stack: Stack, page: Page) -> None:
    page.goto(f"{stack.fog_url}/ui/?tz=Asia/Tokyo#overview")
    page.wait_for_selector("section#overview[data-loaded]", state="attached", timeout=WAIT_MS)
    assert "GMT+9" in page.inner_text("header") + page.inner_text("section#overview")


class _Newcomer:
    """A firmware meter nobody enrolled, on the demo's clock and lab broker: it says hello
    (a birth) and waits for enrollment."""

    def __init__(self, stack: Stack, where: Path) -> None:
        cfg = tomllib.loads((stack.out / "fog.toml").read_text())["fog"]
        info = fog(stack).checkpoint()
        clock = VirtualClock(cfg["sim_start"], cfg["sim_compress"], time.time,
                             t0=cfg["sim_epoch"])
        self.meter: VirtualMeter = make_meter(99, where, clock, {
            "dur": 900, "source": "sim", "fog": info["fog_id"], "fog_pub": info["fog_pub"],
            "transport": "mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": stack.broker_port})
        self.dev = bytes(self.meter.app.meter.id).hex()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self.meter.app.step()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.meter.app.transport.close()


def _state(stack: Stack, dev: str) -> str | None:
    return next((m["state"] for m in fog(stack).meters()["meters"] if m["dev"] == dev), None)


def test_a_pending_meter_is_enrolled_from_the_page_with_the_operator_token_only(
        stack: Stack, page: Page, tmp_path: Path) -> None:
    newcomer = _Newcomer(stack, tmp_path / "newcomer")
    try:
        wait(lambda: _state(stack, newcomer.dev) == "pending", timeout=120,
             what="the newcomer's birth", every=0.5)
        open_section(page, stack.fog_url, "", "meters", stack.auditor)
        row = f"section#meters .pending tr[data-key='{newcomer.dev}']"
        page.wait_for_selector(row, timeout=WAIT_MS)
        page.click(f"{row} button.enroll")  # the auditor's token: a lower tier
        page.wait_for_selector("#enroll-said .notice.warn", timeout=WAIT_MS)
        assert "403" in page.inner_text("#enroll-said")
        assert _state(stack, newcomer.dev) == "pending"
        page.fill("#token", stack.fog_operator)
        page.click("#token-form button")
        loaded_again(page, "meters")  # the token's reload, before the click
        page.click(f"{row} button.enroll")
        page.wait_for_selector("#enroll-said .notice.ok", timeout=WAIT_MS)
        wait(lambda: _state(stack, newcomer.dev) == "active", timeout=120,
             what="the enrollment decision logged", every=0.5)
        page.wait_for_selector(f"section#meters .list tr[data-key='{newcomer.dev}']",
                               timeout=WAIT_MS)
    finally:
        newcomer.close()


# -- the chain's page -------------------------------------------------------------------------
@pytest.mark.parametrize("section", CHAIN_SECTIONS)
def test_every_chain_section_renders_the_stacks_data(stack: Stack, page: Page,
                                                     section: str) -> None:
    open_section(page, stack.chain_url, "", section, "")
    body = page.locator(f"section#{section}")
    assert body.get_attribute("data-error") is None
    assert body.inner_text().strip()


def test_blocks_are_listed_and_a_transaction_is_found_by_its_digest(stack: Stack,
                                                                     page: Page) -> None:
    chain = ChainClient(stack.chain_url)
    open_section(page, stack.chain_url, "", "blocks", "")
    head = chain.head()["height"]
    page.wait_for_selector(f"section#blocks .list tr[data-key='{head}']", timeout=WAIT_MS)
    fog_id = fog(stack).checkpoint()["fog_id"]
    digest = chain.anchors(fog_id)[0]["digest"]
    page.fill("#tx-search", digest)
    page.click("#tx-form button")
    page.wait_for_selector("#tx-found pre", timeout=WAIT_MS)
    shown = json.loads(page.inner_text("#tx-found pre"))
    assert shown == chain.tx(digest)["decoded"] and shown["kind"] == "anchor"


def test_the_anchor_lag_plot_has_a_point_per_anchor(stack: Stack, page: Page) -> None:
    open_section(page, stack.chain_url, "", "anchors", "")
    fog_id = fog(stack).checkpoint()["fog_id"]
    drawn_as_answered(page, "anchors", "/v1/fogs", f"figure[data-fog='{fog_id}']",
                      lambda doc: len(next(f for f in doc["fogs"]
                                           if f["id"] == fog_id)["series"]))


def _open_suggestion(stack: Stack) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def some() -> bool:
        found[:] = ChainClient(stack.chain_url).get("/v1/suggestions", state="open")[
            "suggestions"]
        return bool(found)

    wait(some, timeout=180, what="an open suggestion (the lab rule set)", every=1.0)
    return found[0]


def test_a_suggestion_is_approved_from_the_page_with_the_dispatch_token_only(
        stack: Stack, page: Page) -> None:
    s = _open_suggestion(stack)
    open_section(page, stack.chain_url, "", "dispatch", stack.auditor)
    row = f"section#dispatch .suggestions tr[data-key='{s['id']}']"
    page.wait_for_selector(f"{row} button.approve", timeout=WAIT_MS)
    page.click(f"{row} button.approve")  # the auditor's token: refused
    page.wait_for_selector("#decision .notice.warn", timeout=WAIT_MS)

    def state() -> str:
        out = ChainClient(stack.chain_url).get("/v1/suggestions")["suggestions"]
        return next(x["state"] for x in out if x["id"] == s["id"])

    assert state() == "open"
    page.fill("#token", stack.dispatch)
    page.click("#token-form button")
    loaded_again(page, "dispatch")  # the token's reload, before the click
    page.click(f"{row} button.approve")
    page.wait_for_selector("#decision .notice.ok", timeout=WAIT_MS)
    assert state() == "approved"


# -- the audit page ---------------------------------------------------------------------------
def _verify(page: Page, bundle: str) -> str:
    page.fill("#bundle", bundle)
    page.click("#run-verify")
    page.wait_for_selector("#result[data-result]", state="attached", timeout=WAIT_MS)
    return page.get_attribute("#result", "data-result") or ""


def test_the_demos_bundle_verifies_in_the_browser(stack: Stack, page: Page) -> None:
    open_section(page, stack.chain_url, "audit.html", "verify", "")
    # the chain's page offers the key it announces
    assert page.input_value("#trusted") == stack.dispatch_pub
    assert _verify(page, (stack.out / "bundle.json").read_text()) == "pass"
    rows = page.locator("#result tbody tr[data-key]")  # the checks (then the reading)
    assert rows.count() == len(audit.CHECKS)
    assert page.locator("#result .badge.ok").count() == len(audit.CHECKS)


def _tampered(stack: Stack) -> tuple[dict[str, Any], str]:
    doc = json.loads((stack.out / "bundle.json").read_text())
    raw = bytearray.fromhex(doc["reading"])
    raw[-1] ^= 1  # the signature's last byte
    doc["reading"] = raw.hex()
    with pytest.raises(audit.BundleError) as e:
        audit.verify_bundle(doc, [P.PublicKey(bytes.fromhex(stack.dispatch_pub))])
    return doc, e.value.check


def test_a_tampered_bundle_shows_the_check_it_fails(stack: Stack, page: Page) -> None:
    doc, check = _tampered(stack)
    open_section(page, stack.chain_url, "audit.html", "verify", "")
    assert _verify(page, json.dumps(doc)) == "fail"
    failed = page.locator("#result tbody tr[data-key]", has=page.locator(".badge.bad"))
    assert failed.count() == 1 and failed.get_attribute("data-key") == check
    # nothing before it failed, nothing after it ran
    names = [n for n, _ in audit.CHECKS]
    assert page.locator("#result .badge.ok").count() == names.index(check)


def test_the_fog_audit_page_fetches_a_readings_bundle_for_the_auditor(stack: Stack,
                                                                      page: Page) -> None:
    dev = next(m["dev"] for m in fog(stack).meters()["meters"] if m["state"] == "active")
    open_section(page, stack.fog_url, "audit.html", "verify", stack.auditor)
    page.fill("#pick-dev", dev)
    page.fill("#pick-seq", "1")
    page.click("#pick")
    wait(lambda: len(page.input_value("#bundle")) > 100, timeout=60,
         what="the fetched bundle in the text box", every=0.2)
    page.fill("#trusted", stack.dispatch_pub)
    page.click("#run-verify")
    page.wait_for_selector("#result[data-result]", state="attached", timeout=WAIT_MS)
    if page.get_attribute("#result", "data-result") != "pass":  # say why: it has failed once
        text, trusted = page.input_value("#bundle"), page.input_value("#trusted")
        try:
            audit.verify_bundle(json.loads(text), [P.PublicKey(bytes.fromhex(
                stack.dispatch_pub))])
            python = "the Python verifier passes it"
        except (ValueError, audit.BundleError) as e:
            python = f"the Python verifier says {e}"
        pytest.fail(f"the browser rejected it: {page.inner_text('#result')[:600]!r}; "
                    f"#trusted {(trusted == stack.dispatch_pub and 'is') or 'is not'} the "
                    f"dispatch key; {python}; bundle {text[:300]!r}")
