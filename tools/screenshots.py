"""The README's pictures of the dashboard, made from a running demo stack (`make screenshots`).

    python -m tools.screenshots [--out docs/screenshots] [--meters 12]

Starts the demo with --keep-running (tools.browser.demo_stack), opens every section of the
fog's, the chain's and the audit page in headless Chromium with the auditor token, waits
until each has drawn its data, and writes one PNG per section. Times are shown in UTC
(?tz=UTC) so a picture does not depend on the machine that made it. Needs the dev extras
(Playwright) and Debian's chromium.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page

from meterledger.infra.args import ArgumentParser
from tools.browser import Stack, StackError, chromium, demo_stack

# (file, service, page, section)
SHOTS = (
    ("fog-overview", "fog", "", "overview"), ("fog-meters", "fog", "", "meters"),
    ("fog-feeders", "fog", "", "feeders"), ("fog-vee", "fog", "", "vee"),
    ("fog-checkpoints", "fog", "", "checkpoints"), ("fog-rejections", "fog", "", "rejections"),
    ("chain-overview", "chain", "", "overview"), ("chain-blocks", "chain", "", "blocks"),
    ("chain-anchors", "chain", "", "anchors"), ("chain-dispatch", "chain", "", "dispatch"),
    ("audit", "chain", "audit.html", "verify"),
)
WAIT_MS = 60_000  # a section draws its data within this: a limit on a hang only


def open_section(page: Page, base: str, file: str, section: str, token: str) -> None:
    """Open one section with `token` and wait until it has loaded its data once."""
    page.goto(f"{base}/ui/{file}?tz=UTC#{section}")
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=WAIT_MS)
    if token:
        page.fill("#token", token)
        page.click("#token-form button")
    page.wait_for_selector(f"section#{section}[data-loaded]:not([data-error])",
                           state="attached", timeout=WAIT_MS)


def loaded_again(page: Page, section: str) -> None:
    """Wait until `section` has loaded its data once more than it has now (a poll). Polled
    from here: the pages' CSP forbids the eval that Playwright's wait_for_function uses."""
    def count() -> int:
        return int(page.get_attribute(f"section#{section}", "data-loaded") or 0)

    first = count()
    deadline = time.monotonic() + WAIT_MS / 1000
    while count() <= first:
        if time.monotonic() > deadline:
            raise StackError(f"section {section} did not load again within {WAIT_MS} ms")
        page.wait_for_timeout(100)


def shoot(stack: Stack, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    bundle = (stack.out / "bundle.json").read_text()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for name, service, file, section in SHOTS:
            base = stack.fog_url if service == "fog" else stack.chain_url
            open_section(page, base, file, section, stack.auditor)
            if section == "verify":
                page.fill("#bundle", bundle)
                page.click("#run-verify")
                page.wait_for_selector("#result[data-result]", state="attached",
                                       timeout=WAIT_MS)
            else:
                loaded_again(page, section)  # a polled section: drawn twice, plots sized
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m tools.screenshots", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/screenshots"),
                   help="folder the PNG files are written to (default: %(default)s)")
    p.add_argument("--meters", type=int, default=12,
                   help="virtual meters in the demo stack (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="ml-shots-") as tmp, \
                demo_stack(Path(tmp) / "demo", meters=args.meters, intervals=3) as stack:
            files = shoot(stack, args.out)
    except StackError as e:
        print(f"screenshots: {e}", file=sys.stderr)
        return 1
    print(json.dumps([str(f) for f in files]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
