"""A researcher's way through the pages: pick two listings, assemble a contract, break and fix it in
the editor (the verifier's violation appears at its line), submit, and watch the job complete."""

from __future__ import annotations

import json
import re

import pytest
from browser_world import PAINTED, Market
from playwright.sync_api import Locator, Page, expect

pytestmark = pytest.mark.browser
CONSUMER = "4"
WATCH_PROGRESS = """() => {
  window.__seen = [];
  const note = () => {
    const bar = document.getElementById("progress");
    const state = document.getElementById("job-state");
    const seen = { step: Number(bar.dataset.step), steps: Number(bar.dataset.steps) };
    window.__seen.push({ ...seen, state: state?.dataset.state });
  };
  note();
  const all = { attributes: true, subtree: true, childList: true };
  new MutationObserver(note).observe(document.getElementById("app"), all);
}"""


def epsilon_lines(page: Page) -> Locator:
    return page.locator(".cm-content .cm-line").filter(has_text=re.compile(r'^\s*"epsilon":'))


def retype_value(page: Page, line: Locator, old: str, new: str) -> None:
    """Puts the cursor at the end of `line` and replaces its value by typing, as a person would."""
    line.click()
    page.keyboard.press("End")
    for _ in old:
        page.keyboard.press("Backspace")
    page.keyboard.type(new)


def editor_text(page: Page) -> str:
    return str(json.loads(page.evaluate("sessionStorage.getItem('sterling.editor')"))["text"])


def test_assemble_verify_submit_and_watch_the_job(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    north, south = market.listings["north"], market.listings["south"]
    page.goto("/#/market")
    for listing in (north, south):
        card = page.locator(f'article[data-listing-id="{listing.id}"]')
        card.get_by_role("button", name="Add to dataset").click()
        expect(card.get_by_role("button")).to_contain_text("In your dataset")
    expect(page.locator("#basket-count")).to_have_text("2")

    page.click("#go-assemble")
    rows = page.locator("#dataset tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#dataset tfoot")).to_contain_text("4,000")  # 2,400 + 1,600 rows
    page.locator("#families label", has_text="Logistic regression").click()
    page.locator("#assemble-account").select_option(CONSUMER)
    shot(page, "assemble")
    page.click("#assemble-go")

    # The contract opens in the editor and passes: one ε for both, within South's small cap of 0.5.
    expect(page).to_have_url(re.compile(r"#/editor$"))
    panel = page.locator("#verify-panel")
    expect(panel).to_have_attribute("data-state", "ok", timeout=30_000)
    expect(epsilon_lines(page)).to_have_count(2)
    south_index = sorted([north.id, south.id]).index(south.id)  # the job lists them in id order
    south_line = epsilon_lines(page).nth(south_index)
    value = re.search(r'"epsilon":\s*([0-9.e+-]+)', south_line.inner_text()).group(1)  # type: ignore[union-attr]
    assert float(value) == south.cap

    # Ask South for more ε than its per-job cap: the violation appears at that line and in the list.
    retype_value(page, south_line, value, "1.5")
    expect(panel).to_have_attribute("data-state", "violations", timeout=30_000)
    flagged = page.locator(".cm-line:has(.cm-lintRange-error)")
    expect(flagged.filter(has_text='"epsilon": 1.5')).to_have_count(1)
    text = editor_text(page)
    expected_line = [i + 1 for i, t in enumerate(text.splitlines()) if re.match(r'\s*"epsilon":', t)][
        south_index
    ]
    item = page.locator(f'#violations li[data-term="max_epsilon_per_job"][data-listing-id="{south.id}"]')
    expect(item).to_have_count(1)
    expect(item).to_have_attribute("data-line", str(expected_line))
    expect(item.locator(".asked-value")).to_have_text("1.5")
    expect(item.locator(".allowed-value")).to_have_text("0.5")
    expect(item).to_contain_text("above the per-job cap")
    # The gutter marker sits on the same line.
    marker = page.locator(".cm-gutterElement:has(.cm-lint-marker-error)")
    expect(marker.first).to_be_visible()
    line_box = page.locator(".cm-line", has_text='"epsilon": 1.5').bounding_box()
    assert line_box is not None
    marker_tops = [box["y"] for m in marker.all() if (box := m.bounding_box()) is not None]
    assert any(abs(y - line_box["y"]) < 4 for y in marker_tops), (marker_tops, line_box)
    expect(page.locator("#submit-job")).to_be_disabled()
    shot(page, "editor-violation")

    # Fix it: the verifier passes again and the summary shows what the job will spend.
    retype_value(page, page.locator(".cm-line", has_text='"epsilon": 1.5'), "1.5", value)
    expect(panel).to_have_attribute("data-state", "ok", timeout=30_000)
    expect(page.locator(".cm-lintRange-error")).to_have_count(0)
    summary = page.locator("#verify-summary")
    expect(summary.locator(f'tr[data-listing-id="{north.id}"]')).to_contain_text("0.002 ETH")
    expect(summary.locator(f'tr[data-listing-id="{south.id}"]')).to_contain_text("0.004 ETH")
    expect(summary.locator(".total-price")).to_contain_text("0.006 ETH")
    shot(page, "editor-ok")

    page.locator("#submit-account").select_option(CONSUMER)
    expect(page.locator("#submit-job")).to_be_enabled()
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(r"#/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])

    # The job's page follows training live from the server's event stream.
    expect(page.locator("#progress[data-step]")).to_have_count(1)
    page.evaluate(WATCH_PROGRESS)
    expect(page.locator("#job-state")).to_have_attribute(
        "data-state", re.compile("claimed|training|completed"), timeout=60_000
    )
    shot(page, "job-running")
    expect(page.locator("#job-state")).to_have_attribute("data-state", "completed", timeout=120_000)
    seen = page.evaluate("window.__seen")
    assert seen[0]["state"] != "completed", "the page opened after the job had finished"
    steps = [s["step"] for s in seen]
    assert steps == sorted(steps), f"progress went backwards: {steps}"
    assert steps[0] < steps[-1] == seen[-1]["steps"] > 0, steps
    expect(page.locator("#progress-text")).to_contain_text(f"Step {seen[-1]['steps']} of {seen[-1]['steps']}")

    # Then the model's quality, the payouts and the appraisal shares, as charts.
    expect(page.locator("#metrics")).to_be_visible()
    accuracy = float(page.locator('#metrics dd[data-metric="accuracy"]').inner_text())
    assert accuracy > 0.8
    payouts = page.locator("#payouts")
    expect(payouts.locator(f'tr[data-listing-id="{north.id}"] .payout')).to_contain_text("0.002 ETH")
    expect(payouts.locator(f'tr[data-listing-id="{south.id}"] .payout')).to_contain_text("0.004 ETH")
    expect(page.locator("#appraisal")).to_have_attribute("data-method", "row_share")
    for chart in ("payout-chart", "appraisal-chart", "epsilon-chart"):
        assert page.evaluate(PAINTED, chart) > 500, f"{chart} drew nothing"
    expect(page.locator("#job-event-table")).to_contain_text("JobCompleted")
    expect(page.locator("#job-event-table")).to_contain_text("Payout")
    # The events come a page at a time, newest first: the submission is on one page of them all.
    page.goto(f"/#/jobs/{job_id}?per_page=200")
    expect(page.locator("#job-events-pager")).to_have_attribute("data-pages", "1")
    # δ reads as a probability, not as the chain's 10⁻¹⁸ fixed point.
    submitted = page.locator('#job-event-table tr[data-event="JobSubmitted"] .args')
    expect(submitted).to_contain_text("delta=0.00001")
    expect(submitted).not_to_contain_text("delta=10000000000000")
    detail = market.api(f"/api/jobs/{job_id}")
    assert detail["state"] == "completed"
    shot(page, "job-completed")
