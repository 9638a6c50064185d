"""Browser tests: Debian's chromium driven by Playwright against a real market served by `sterling serve`.

The market (chain, worker, listings, server) is started once per session as separate processes;
each test gets a fresh browser context, which fails the test on any JavaScript error and on any
request that leaves loopback (the pages must load nothing from the internet). The context logs in
first, as a user opening the tokened URL `sterling serve` printed: the server's redirect sets its
HttpOnly, SameSite=Strict cookie (on /api-docs, so that each test still starts the app afresh).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser_world import Market, start_market
from playwright.sync_api import Browser, Page, Route, expect

ROOT = Path(__file__).resolve().parents[2]
# The machine is shared and slow at times: waiting is for a state to appear, never a performance check.
expect.set_options(timeout=30_000)


@pytest.fixture(scope="session")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    if not (ROOT / "src/sterling/web/static/dist/app.js").exists():
        pytest.fail("the pages are not built: run `node web/build.mjs` (make does)")
    m = Market(tmp_path_factory.mktemp("market"))
    try:
        start_market(m)
        yield m
    finally:
        m.stop_all()


@pytest.fixture
def page(browser: Browser, market: Market) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=market.base_url)
    context.set_default_timeout(30_000)
    outside: list[str] = []

    def only_loopback(route: Route) -> None:
        if route.request.url.startswith(market.base_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    p = context.new_page()
    login = p.goto(f"{market.base_url}/api-docs?token={market.token}")
    assert login is not None
    assert login.ok
    assert login.url == f"{market.base_url}/api-docs"  # the token left the address bar
    (cookie,) = context.cookies()
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the page asked for something outside loopback: {outside}"


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("STERLING_SCREENSHOTS") or ROOT / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def shot(screenshots: Path) -> Callable[[Page, str], Path]:
    """Writes a full-page screenshot named `name`.png into the screenshots folder."""

    def take(p: Page, name: str) -> Path:
        path = screenshots / f"{name}.png"
        p.evaluate("window.scrollTo(0, 0)")  # the sticky header then sits at the top of the picture
        p.screenshot(path=str(path), full_page=True)
        return path

    return take
