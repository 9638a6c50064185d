"""Money on the pages: a provider sees what a settled job earned and withdraws it, derives a listing
under new terms and takes one off sale; a buyer cancels a job, sees the refund and withdraws it."""

from __future__ import annotations

import os
import signal

import pytest
from browser_world import Market
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser
NORTH_PROVIDER, SOUTH_PROVIDER = "5", "6"  # browser_world.PROVIDERS
BUYER = "9"


def test_a_provider_sees_earnings_after_a_job_settled_and_withdraws_them(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    market.wait_idle()  # the CLI's job on North has settled; nothing else is paying North now
    north = market.listings["north"]
    credited = market.api(f"/api/accounts/{NORTH_PROVIDER}/balance")
    assert int(credited["balance_wei"]) > 0
    page.goto("/#/provider/listings")
    expect(page.locator("#seller-account")).to_be_enabled()
    page.locator("#seller-account").select_option(NORTH_PROVIDER)
    wallet = page.locator("#earnings")
    expect(wallet).to_have_attribute("data-balance-wei", credited["balance_wei"])
    expect(page.locator(f'#earnings-table tr[data-job-id="{market.cli_job}"]')).to_contain_text(
        f"#{north.id}"
    )
    row = page.locator(f'#my-listings tr[data-listing-id="{north.id}"]')
    expect(row).to_contain_text(north.name)
    expect(row.locator(".state")).to_have_text("on sale")
    earned = next(x for x in market.api(f"/api/provider/listings?account={NORTH_PROVIDER}")["listings"]
                  if x["id"] == north.id)["earned_wei"]  # fmt: skip
    assert int(earned) > 0
    expect(row.locator(".earned")).to_contain_text(f"{int(earned):,} wei")
    shot(page, "provider-earnings")

    page.click("#earnings-withdraw")
    done = page.locator("#earnings-withdrawn")
    expect(done).to_have_attribute("data-withdrawn-wei", credited["balance_wei"])
    expect(done).to_contain_text("sent to the account's wallet")
    expect(wallet).to_have_attribute("data-balance-wei", "0")
    expect(page.locator("#earnings-withdraw")).to_be_disabled()
    assert market.api(f"/api/accounts/{NORTH_PROVIDER}/balance")["balance_wei"] == "0"
    shot(page, "provider-earnings-withdrawn")


def test_a_provider_derives_a_listing_and_takes_it_off_sale(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    south = market.listings["south"]
    page.goto("/#/provider/listings")
    expect(page.locator("#seller-account")).to_be_enabled()
    page.locator("#seller-account").select_option(SOUTH_PROVIDER)
    parent_row = page.locator(f'#my-listings tr[data-listing-id="{south.id}"]')
    parent_row.locator('[data-action="derive"]').click()
    form = page.locator("#derive-form")
    expect(form).to_have_attribute("data-parent", str(south.id))
    expect(page.locator("#derive_price_per_job")).to_have_value("0.003")  # the parent's terms to start

    # A cap above the data's whole budget is refused next to the cap, and nothing is listed.
    before = market.api("/api/listings")["total"]
    page.fill("#derive_max_epsilon", "99")
    page.click("#derive-submit")
    cap_error = page.locator('#derive-form [data-field="max_epsilon_per_job"] .field-error')
    expect(cap_error).to_contain_text("exceeds the budget")
    assert market.api("/api/listings")["total"] == before

    page.fill("#derive_price_per_job", "0.004")
    page.fill("#derive_max_epsilon", "0.25")
    page.click("#derive-submit")
    derived = page.locator("#derived")
    expect(derived).to_contain_text(f"derived from #{south.id}")
    child_id = int(derived.get_attribute("data-listing-id") or 0)
    child = market.api(f"/api/listings/{child_id}")
    assert child["parent"] == south.id
    assert child["terms"]["price_per_job_wei"] == "4000000000000000"
    assert child["terms"]["max_epsilon_per_job"] == 0.25
    row = page.locator(f'#my-listings tr[data-listing-id="{child_id}"]')
    expect(row).to_contain_text(f"derived from #{south.id}")
    expect(row.locator(".state")).to_have_text("on sale")
    shot(page, "provider-derived")

    row.locator('[data-action="withdraw"]').click()
    expect(row).to_contain_text("off sale for good?")
    row.locator('[data-action="confirm-withdraw"]').click()
    expect(page.locator("#withdrawn-listing")).to_have_attribute("data-listing-id", str(child_id))
    expect(row).to_have_attribute("data-active", "false")
    expect(row.locator(".state")).to_have_text("off sale")
    expect(row.locator('[data-action="withdraw"]')).to_have_count(0)
    expect(parent_row).to_have_attribute("data-active", "true")  # the parent stays on sale
    assert market.api(f"/api/listings/{child_id}")["open"] is False
    shot(page, "provider-withdrawn-listing")


def test_a_buyer_sees_the_refund_of_a_cancelled_job_and_withdraws_it(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    north = market.listings["north"]
    job = market.post("/api/assemble", {"listing_ids": [north.id], "family": "logistic_regression",
                                         "account": int(BUYER)})  # fmt: skip
    market.wait_idle()
    assert market.worker is not None
    os.kill(market.worker.pid, signal.SIGSTOP)  # idle, so the job stays pending and no lease runs out
    try:
        job_id = int(market.post("/api/jobs", {"text": job["text"], "account": int(BUYER)})["job_id"])
        page.goto(f"/#/jobs/{job_id}")
        page.locator("#cancel-job").click()
        expect(page.locator("#job-state")).to_have_attribute("data-state", "cancelled")
    finally:
        os.kill(market.worker.pid, signal.SIGCONT)
    escrow = market.api(f"/api/jobs/{job_id}")["escrow_wei"]
    wallet = page.locator("#refund-wallet")
    expect(wallet).to_have_attribute("data-balance-wei", escrow)
    expect(page.locator(f'#refund-wallet-table tr[data-job-id="{job_id}"]')).to_contain_text("cancelled")
    shot(page, "buyer-refund")
    page.click("#refund-wallet-withdraw")
    expect(page.locator("#refund-wallet-withdrawn")).to_have_attribute("data-withdrawn-wei", escrow)
    expect(wallet).to_have_attribute("data-balance-wei", "0")
    expect(page.locator("#refund-wallet-withdraw")).to_be_disabled()
    assert market.api(f"/api/accounts/{BUYER}/balance")["balance_wei"] == "0"

    # Beside the jobs in the explorer, the same buyer's balance and where it came from.
    page.goto("/#/explorer")
    expect(page.locator("#refund-account")).to_be_enabled()
    page.locator("#refund-account").select_option(BUYER)
    expect(page.locator(f'#buyer-wallet-table tr[data-job-id="{job_id}"]')).to_contain_text("cancelled")
    expect(page.locator("#buyer-wallet")).to_have_attribute("data-balance-wei", "0")
    expect(page.locator("#buyer-wallet-withdraw")).to_be_disabled()
