"""A data owner publishes on the provider page: a bad file is refused next to the file field and
nothing is published; a good one is published and appears in the marketplace."""

from __future__ import annotations

import pytest
from browser_world import Market, tabular_csv
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def test_provider_page_refuses_bad_input_then_publishes(page: Page, market: Market, shot, tmp_path):  # type: ignore[no-untyped-def]
    before = market.api("/api/listings")["total"]
    page.goto("/#/provider")
    expect(page.locator("#provider-account")).to_be_enabled()
    page.locator("#provider-account").select_option("7")

    # A table without a label column: refused, with the reason next to the file field.
    bad = tmp_path / "no-labels.csv"
    bad.write_text("age,weight\n34,71\n52,80\n")
    page.set_input_files("#file", str(bad))
    page.fill("#name", "Unlabelled table")
    page.click("#publish")
    error = page.locator('[data-field="file"] > .field-error')
    expect(error).to_contain_text("Not published, nothing was stored")
    expect(error).to_contain_text("label")
    shot(page, "provider-bad-file")
    assert market.api("/api/listings")["total"] == before

    # Bad terms (more ε per job than the whole budget) are refused too, next to the terms.
    good = tabular_csv(tmp_path / "east.csv", 600, seed=3)
    page.set_input_files("#file", str(good))
    page.fill("#name", "Biopsies East")
    page.fill("#description", "Core biopsies from the eastern clinic, labelled by two pathologists.")
    page.fill("#epsilon_budget", "1")
    page.fill("#max_epsilon_per_job", "3")
    page.click("#publish")
    # Next to the terms: the field it names (or the terms as a whole).
    terms_error = page.locator('[data-field="terms"] .field-error:not(:empty)')
    expect(terms_error).to_have_count(1)
    expect(terms_error).to_contain_text("Not published")
    expect(terms_error).to_contain_text("exceeds the budget")
    expect(error).to_be_empty()
    shot(page, "provider-bad-terms")
    assert market.api("/api/listings")["total"] == before

    # A provider contract from the templates, checked in the sandbox before publishing.
    page.check("#with_contract")
    page.locator("#contract-template").select_option("logreg_only")
    page.click("#check-contract")
    expect(page.locator("#contract-panel")).to_have_attribute("data-state", "ok")

    page.fill("#epsilon_budget", "6")
    page.fill("#max_epsilon_per_job", "1.5")
    page.fill("#price_per_job_wei", "0.0025")
    page.check("#publish_preview")
    page.click("#publish")
    published = page.locator("#published")
    expect(published).to_contain_text("Published as listing", timeout=60_000)
    listing_id = int(published.get_attribute("data-listing-id") or 0)
    expect(page.locator(".field-error:not(:empty)")).to_have_count(0)
    shot(page, "provider-published")

    page.click("#published a")
    card = page.locator(f'article[data-listing-id="{listing_id}"]')
    expect(card).to_contain_text("Biopsies East")
    expect(card.locator("dd.rows")).to_have_text("600")
    expect(card).to_contain_text("0.0025 ETH")
    expect(card).to_contain_text("Provider contract")
    expect(card.locator(".description")).to_contain_text("labelled by two pathologists")
    # This provider chose to publish a preview, so its card (and only its card) shows one, and it loads.
    preview = card.locator("img.preview")
    expect(preview).to_have_count(1)
    expect(page.locator("img.preview")).to_have_count(1)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=preview.element_handle())
    shot(page, "market-with-preview")
    detail = market.api(f"/api/listings/{listing_id}")
    assert detail["terms"]["price_per_job_wei"] == "2500000000000000"
    assert detail["terms"]["has_contract"] is True
    assert detail["budget"]["epsilon_total"] == 6.0
