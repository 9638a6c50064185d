"""The marketplace page: every listing with its terms and budget; filtering and sorting work."""

from __future__ import annotations

import re

import pytest
from browser_world import Market
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def card_ids(page: Page) -> list[int]:
    return [
        int(x)
        for x in page.locator("#listings article.listing").evaluate_all(
            "els => els.map(e => e.dataset.listingId)"
        )
    ]


def card_rows(page: Page) -> list[int]:
    return [
        int(t.replace(",", "")) for t in page.locator("#listings article.listing dd.rows").all_inner_texts()
    ]


def reloaded(page: Page, action) -> None:  # type: ignore[no-untyped-def]
    """Runs `action` and waits until the listings have been fetched and drawn again."""
    grid = page.locator("#listings")
    before = grid.get_attribute("data-loaded") or ""
    action()
    expect(grid).not_to_have_attribute("data-loaded", before)


def test_market_lists_filters_and_sorts(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    north, south = market.listings["north"], market.listings["south"]
    page.goto("/")
    expect(page).to_have_url(re.compile(r"#/market$"))
    cards = page.locator("#listings article.listing")
    expect(cards.filter(has_text="Biopsies North")).to_have_count(1)
    expect(cards.filter(has_text="Biopsies South")).to_have_count(1)
    # The header names the chain and shows the SIMULATION badge, since the enclave is simulated.
    expect(page.locator("#chain-status")).to_contain_text("Chain 31337")
    expect(page.locator("#chain-status .badge.sim")).to_have_text("SIMULATION")

    south_card = page.locator(f'article[data-listing-id="{south.id}"]')
    expect(south_card.locator("dd.rows")).to_have_text("1,600")
    expect(south_card.locator("dd.cap")).to_have_text("0.5")
    expect(south_card).to_contain_text("benign, malignant")
    expect(south_card).to_contain_text("0.003 ETH")  # price per job, in ETH...
    expect(south_card).to_contain_text("3,000,000,000,000,000 wei")  # ...and in wei
    # The bar of ε left matches the chain (other tests may have spent some of it already).
    budget = market.api(f"/api/listings/{south.id}")["budget"]
    left = budget["epsilon_left"]
    expect(south_card.locator(".budget-text")).to_contain_text(f"left: {round(left, 2):g} of 4")
    width = float(south_card.locator(".budget .left").evaluate("e => e.style.width").rstrip("%"))
    assert width == pytest.approx(100 * left / budget["epsilon_total"])
    # No provider here published a preview, so none is shown.
    expect(page.locator("#listings img.preview")).to_have_count(0)
    shot(page, "market")

    page.fill("#filter-q", "south")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-listing-id", str(south.id))
    page.fill("#filter-q", "no such dataset")
    expect(page.locator("#listings .empty")).to_contain_text("No listing matches these filters")
    page.fill("#filter-q", "")
    expect(cards.filter(has_text="Biopsies")).to_have_count(2)

    reloaded(page, lambda: page.select_option("#sort", "rows"))  # most rows first
    expect(cards.first).to_have_attribute("data-listing-id", str(north.id))
    rows = card_rows(page)
    assert rows == sorted(rows, reverse=True)
    ids = card_ids(page)
    assert ids.index(north.id) < ids.index(south.id)
    reloaded(page, lambda: page.click("#order"))
    expect(page.locator("#order")).to_contain_text("ascending")
    rows = card_rows(page)
    assert rows == sorted(rows)
    ids = card_ids(page)
    assert ids.index(south.id) < ids.index(north.id)

    # Cheapest first, by the price at the per-job ε cap: South 0.003 + 0.5 × 0.002 = 0.004 ETH,
    # North 0.001 + 2 × 0.002 = 0.005 ETH.
    reloaded(page, lambda: page.select_option("#sort", "price"))
    expect(page.locator("#order")).to_contain_text("ascending")
    expect(cards.first).to_have_attribute("data-listing-id", str(south.id))
    ids = card_ids(page)
    assert ids.index(south.id) < ids.index(north.id)
