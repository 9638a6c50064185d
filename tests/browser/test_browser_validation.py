"""A researcher brings their own validation set: the contract then evaluates on it and appraises each
provider, and the job's page draws the released appraisal values and the validation curve. While that
job has trained, a second one, submitted while the worker is paused, is cancelled and refunded."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from browser_world import FEATURES, PAINTED, Market, tabular_csv
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser
CONSUMER = "8"


def test_validation_set_appraisal_values_and_cancel_and_refund(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    north, south = market.listings["north"], market.listings["south"]
    page.goto("/#/market")
    for listing in (north, south):
        card = page.locator(f'article[data-listing-id="{listing.id}"]')
        card.get_by_role("button", name="Add to dataset").click()
        expect(card.get_by_role("button")).to_contain_text("In your dataset")
    page.click("#go-assemble")
    status = page.locator("#validation-status")
    expect(status).to_have_attribute("data-state", "none")

    # A file with the wrong columns is refused in plain words, naming what is wrong.
    narrow = market.tmp / "narrow.csv"
    narrow.write_text("f0,f1,label\n" + "".join(f"{i},{-i},benign\n{-i},{i},malignant\n" for i in range(10)))
    page.set_input_files("#validation-file", str(narrow))
    page.click("#validation-upload")
    expect(status).to_have_attribute("data-state", "error")
    expect(status).to_contain_text(
        f"tabular [2], unlike listing {min(north.id, south.id)} (tabular [{FEATURES}])"
    )

    page.set_input_files("#validation-file", str(tabular_csv(market.tmp / "validation.csv", 300, seed=3)))
    page.click("#validation-upload")
    expect(status).to_have_attribute("data-state", "ready")
    expect(status).to_contain_text("300 rows, classes benign, malignant")
    page.locator("#families label", has_text="Logistic regression").click()
    page.locator("#assemble-account").select_option(CONSUMER)
    shot(page, "assemble-validation")
    page.click("#assemble-go")

    expect(page).to_have_url(re.compile(r"#/editor$"))
    expect(page.locator("#verify-panel")).to_have_attribute("data-state", "ok", timeout=30_000)
    text = str(json.loads(page.evaluate("sessionStorage.getItem('sterling.editor')"))["text"])
    doc = json.loads(text)
    uploaded = page.evaluate("JSON.parse(sessionStorage.getItem('sterling.validation')).validation_uri")
    assert doc["evaluation"]["validation_uri"] == uploaded
    assert doc["release"]["appraisal_values"] is True
    assert doc["release"]["appraisal_epsilon"] > 0
    page.locator("#submit-account").select_option(CONSUMER)
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(r"#/jobs/\d+$"))
    first = int(page.url.rsplit("/", 1)[1])

    # The first job completes with real appraisal values and the curve on the validation set.
    page.goto(f"/#/jobs/{first}")
    expect(page.locator("#job-state")).to_have_attribute("data-state", "completed", timeout=120_000)
    expect(page.locator("#cancel-job")).to_have_count(0)
    appraisal = page.locator("#appraisal")
    expect(appraisal).to_have_attribute("data-released", "true")
    method = appraisal.get_attribute("data-method")
    assert method
    assert method != "row_share"
    expect(page.locator("#appraisal-method")).to_contain_text(f"Method: {method.replace('_', ' ')}")
    rows = page.locator("#appraisal-table tbody tr")
    expect(rows).to_have_count(2)
    detail = market.api(f"/api/jobs/{first}")
    values = detail["result"]["appraisal"]["values"]
    for lid, value in values.items():
        row = page.locator(f'#appraisal-table tr[data-listing-id="{lid}"]')
        expect(row.locator(".appraisal-value")).to_have_text(f"{value:.4f}")
        flagged = int(lid) in detail["result"]["appraisal"]["flagged"]
        expect(row).to_have_attribute("data-flagged", str(flagged).lower())
    expect(page.locator("#metrics")).to_contain_text("Measured on your own validation set")
    checkpoint = detail["result"]["checkpoint"]
    expect(page.locator("#checkpoint")).to_have_attribute("data-points", str(len(checkpoint["curve"])))
    expect(page.locator("#checkpoint")).to_contain_text(f"model from step {checkpoint['selected_step']:,}")
    for chart in ("appraisal-chart", "checkpoint-chart"):
        assert page.evaluate(PAINTED, chart) > 500, f"{chart} drew nothing"
    shot(page, "job-appraisal")

    # A second job, while the worker is paused (SIGSTOP, once it is idle, so no lease runs out):
    # it stays pending for as long as the test needs, and its page offers to cancel it.
    market.wait_idle()
    assert market.worker is not None
    os.kill(market.worker.pid, signal.SIGSTOP)
    try:
        second = int(market.post("/api/jobs", {"text": text, "account": int(CONSUMER)})["job_id"])
        assert second > first
        page.goto(f"/#/jobs/{second}")
        expect(page.locator("#job-state")).to_have_attribute("data-state", "pending")
        button = page.locator("#cancel-job")
        expect(button).to_have_text("Cancel and refund")
        shot(page, "job-pending-cancel")
        button.click()
        expect(page.locator("#job-state")).to_have_attribute("data-state", "cancelled")
    finally:
        os.kill(market.worker.pid, signal.SIGCONT)
    escrow = market.api(f"/api/jobs/{second}")["escrow_wei"]
    result = page.locator("#cancel-result")
    expect(result).to_have_attribute("data-refund-wei", escrow)
    expect(result).to_contain_text(f"Cancelled. {int(escrow) / 10**18:g} ETH")
    expect(result).to_contain_text("was refunded to the buyer's Marketplace balance")
    expect(page.locator("#job-head")).to_contain_text("Refunded")
    expect(page.locator("#cancel-job")).to_have_count(0)
