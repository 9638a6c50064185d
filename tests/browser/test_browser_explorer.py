"""The explorer: enclaves (with the SIMULATION badge), jobs, blocks, transactions and events."""

from __future__ import annotations

import re

import pytest
from browser_world import Market
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def test_explorer_shows_the_chain_in_plain_words(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    job = market.cli_job
    page.goto("/#/explorer")
    enclave = page.locator("#enclaves tbody tr")
    expect(enclave).to_have_count(1)
    expect(enclave.locator(".badge.sim")).to_have_text("SIMULATION")
    expect(enclave.locator(".measurement")).to_have_text(re.compile(r"^0x[0-9a-f]{64}$"))

    row = page.locator(f'#jobs tr[data-job-id="{job}"]')
    expect(row).to_contain_text("completed", timeout=90_000)  # the CLI's job, trained by the worker
    expect(row).to_contain_text(f"#{market.listings['north'].id}")

    expect(page.locator("#blocks tbody tr").first).to_be_visible()
    mined = page.locator("#mined-transactions tbody tr")
    expect(mined.first).to_be_visible()
    expect(page.locator("#mined-transactions")).to_contain_text("complete_job")

    page.locator("#event-filter").select_option("JobCompleted")
    events = page.locator("#events tbody tr")
    expect(events.filter(has_text=f"job_id={job},")).to_have_count(1)
    names = set(events.evaluate_all("rows => rows.map(r => r.dataset.event)"))
    assert names == {"JobCompleted"}
    shot(page, "explorer")

    # A transaction's page shows what it recorded; its block's page lists it.
    events.filter(has_text=f"job_id={job},").locator('a[href^="#/tx/"]').click()
    expect(page.locator("h1")).to_contain_text("Transaction")
    expect(page.locator(".facts")).to_contain_text("complete_job")
    expect(page.locator("#tx-events")).to_contain_text("JobCompleted")
    expect(page.locator("#tx-events")).to_contain_text("Payout")
    shot(page, "transaction")
    page.locator('.facts a[href^="#/blocks/"]').click()
    expect(page.locator("h1")).to_contain_text(re.compile(r"Block \d+"))
    expect(page.locator("#block-transactions")).to_contain_text("complete_job")
    shot(page, "block")

    page.goto(f"/#/jobs/{job}")
    expect(page.locator("#job-state")).to_have_attribute("data-state", "completed")
    expect(page.locator("#progress")).to_have_attribute("data-step", "40")
    expect(page.locator("#job-head .badge.sim")).to_have_text("SIMULATION")
