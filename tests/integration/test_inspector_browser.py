"""The inspector in a real browser: headless Chromium driven by Playwright.

It loads the inspector, sees a request appear live, replays it with the button
and edits-and-replays another; the recording service must receive both. A
screenshot is kept in the test's directory (and copied to $MESH_SCREENSHOT if
set, to look at).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Mesh, require_tool
from tests.integration.test_http import (  # noqa: F401
    Service,
    cli_http_share,
    request,
    service,
)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def test_inspector_in_chromium(mesh: Mesh, service: Service, tmp_path: Path) -> None:  # noqa: F811
    chromium = require_tool("chromium", "chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    hs = cli_http_share(mesh, service)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(hs.inspector)
            sync_api.expect(page.locator("#conn")).to_have_text("● live", timeout=15_000)

            # a request made after the page loaded appears without a reload
            assert request(hs.port, "POST", "/echo?from-browser-test", b'{"n": 1}',
                           headers={"Content-Type": "application/json"})[0] == 200
            row = page.locator("#rows tr", has_text="/echo?from-browser-test")
            sync_api.expect(row).to_have_count(1, timeout=15_000)
            sync_api.expect(row).to_contain_text("200")
            row.click()
            sync_api.expect(page.locator("#detail h2")).to_have_text(
                "POST /echo?from-browser-test")
            sync_api.expect(page.locator("#detail pre").first).to_contain_text('"n": 1')

            page.click("#replay")
            sync_api.expect(page.locator("#note")).to_contain_text("replayed #", timeout=15_000)
            assert service.paths().count("/echo?from-browser-test") == 2
            sync_api.expect(page.locator("#rows tr", has_text="/echo?from-browser-test")
                            ).to_have_count(2, timeout=10_000)

            # edit and replay: another path and body
            page.click("#editbtn")
            page.fill("#e-path", "/echo?edited-in-browser")
            page.fill("#e-body", "edited body")
            page.click("#send")
            sync_api.expect(page.locator("#note")).to_contain_text("→ 200", timeout=15_000)
            last = service.seen()[-1]
            assert (last["path"], last["body"]) == ("/echo?edited-in-browser", 11)

            shot = tmp_path / "inspector.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("MESH_SCREENSHOT"):
                shutil.copy(shot, os.environ["MESH_SCREENSHOT"])
        finally:
            browser.close()
