"""The chain's dashboard on the consortium backend, in headless Chromium against the demo's
four CometBFT validators (`tools.demo --consortium --keep-running`): the validators table
shows every validator up with its height and who signed the last commits, and the audit page
verifies the demo's version-2 bundle against the genesis validator set it fills in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from meterledger.clients.chain import ChainClient
from tests.kit.fogkit import wait
from tools import audit, audit_consortium
from tools.browser import Stack, demo_stack
from tools.screenshots import WAIT_MS, open_section

pytestmark = [pytest.mark.browser, pytest.mark.consortium]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with demo_stack(tmp_path_factory.mktemp("uic") / "demo", meters=3, rules=None,
                    consortium=True) as s:
        yield s


def test_the_validators_are_shown_up_with_who_signed_the_last_commits(stack: Stack,
                                                                      page: Page) -> None:
    vals = ChainClient(stack.chain_url).get("/v1/validators")
    assert vals["engine"] == "cometbft"
    names = [v["name"] for v in vals["validators"]]
    open_section(page, stack.chain_url, "", "overview", "")
    for name in names:
        row = f"section#overview .validators tr[data-key='{name}']"
        page.wait_for_selector(row, state="attached", timeout=WAIT_MS)

    def all_up() -> bool:
        return page.locator("section#overview .validators .badge.ok",
                            has_text="up").count() == len(names) == 4

    wait(all_up, timeout=60, what="four validators shown up", every=0.5)
    # each row has a mark per recent commit, and some validator signed the newest
    marks = page.locator(f"section#overview .validators tr[data-key='{names[0]}'] .signed .badge")
    assert marks.count() == len(vals["commits"]) > 0
    assert page.locator("section#overview .validators .signed .badge.ok").count() > 0


def test_the_consortium_bundle_verifies_against_the_announced_genesis(stack: Stack,
                                                                     page: Page) -> None:
    open_section(page, stack.chain_url, "audit.html", "verify", "")
    assert "validators" in page.input_value("#genesis")  # the chain's genesis, filled in
    page.fill("#bundle", (stack.out / "bundle.json").read_text())
    page.click("#run-verify")
    page.wait_for_selector("#result[data-result]", state="attached", timeout=WAIT_MS)
    assert page.get_attribute("#result", "data-result") == "pass", page.inner_text("#result")
    checks = audit.CHECKS[:[n for n, _ in audit.CHECKS].index("block_signature")] \
        + audit_consortium.CHECKS
    assert page.locator("#result tbody tr[data-key]").count() == len(checks)
