"""Fixtures shared by every test: seeds, chains that start and clean up themselves, and one browser."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sterling.config import Settings


@pytest.fixture
def seed() -> int:
    """One fixed seed per test, so a failure reproduces."""
    random.seed(1234)
    return 1234


@pytest.fixture(scope="session")
def anvil_binary():  # type: ignore[no-untyped-def]
    anvil = Settings.from_env().anvil
    if anvil is None:
        pytest.fail("anvil is missing: `make test` installs it into node_modules")
    return anvil


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's chromium through Playwright, one per pytest process.

    Playwright's sync API runs an event loop for as long as it is open, and a second one in the
    same process is refused, so every browser test (tests/browser, tests/faults) shares this one.
    """
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
