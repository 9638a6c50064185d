"""The editor's other paths: empty states, templates, a JSON syntax error marked where it is, and a
provider contract checked live in the sandbox and carried over to the publishing page."""

from __future__ import annotations

import re

import pytest
from browser_world import Market
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def test_empty_states_say_what_to_do(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    page.goto("/#/assemble")
    expect(page.locator("#dataset .empty")).to_contain_text("Your dataset is empty")
    expect(page.locator("#dataset .empty a")).to_have_attribute("href", "#/market")
    expect(page.locator("#assemble-go")).to_be_disabled()
    shot(page, "assemble-empty")
    page.goto("/#/editor")
    expect(page.locator("#verify-panel")).to_have_attribute("data-state", "empty")
    expect(page.locator("#verify-panel")).to_contain_text("Pick a template")
    expect(page.locator("#submit-job")).to_be_disabled()


def test_job_template_and_a_syntax_error(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    north = market.listings["north"]
    page.goto("/#/market")
    page.locator(f'article[data-listing-id="{north.id}"]').get_by_role(
        "button", name="Add to dataset"
    ).click()
    page.click('a[data-nav="editor"]')
    page.locator("#template").select_option("mlp")
    panel = page.locator("#verify-panel")
    expect(panel).to_have_attribute("data-state", "ok", timeout=30_000)
    expect(page.locator(".cm-content")).to_contain_text('"tanh"')  # the MLP's activation
    expect(page.locator("#verify-summary")).to_contain_text("Neural network (MLP)")

    # Delete the document's closing brace: the JSON error is marked on the editor, and explained.
    page.locator(".cm-content .cm-line").last.click()
    page.keyboard.press("End")
    page.keyboard.press("Backspace")
    expect(panel).to_have_attribute("data-state", "parse-error", timeout=30_000)
    expect(panel).to_contain_text("not valid JSON")
    expect(page.locator(".cm-lintRange-error, .cm-lintPoint-error")).not_to_have_count(0)
    expect(page.locator("#submit-job")).to_be_disabled()
    page.keyboard.type("}")
    expect(panel).to_have_attribute("data-state", "ok", timeout=30_000)


def test_provider_contract_checked_live_then_used_to_publish(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    page.goto("/#/editor")
    page.locator('.tab[data-kind="provider"]').click()
    expect(page.locator("#submit-bar")).to_be_hidden()
    page.locator("#template").select_option("logreg_only")
    panel = page.locator("#verify-panel")
    expect(panel).to_have_attribute("data-state", "ok", timeout=30_000)
    expect(panel).to_contain_text("The sandbox accepts this contract")

    # An import the sandbox forbids: refused live, marked on line 1.
    page.locator(".cm-content .cm-line").first.click()
    page.keyboard.press("Home")
    page.keyboard.type("import os\n")
    expect(panel).to_have_attribute("data-state", "violations", timeout=30_000)
    expect(panel.locator(".violation")).to_contain_text("imports os")
    expect(page.locator(".cm-line:has(.cm-lintRange-error)").first).to_have_text("import os")
    shot(page, "editor-provider")
    page.locator(".cm-content .cm-line").first.click()
    page.keyboard.press("Home")
    page.keyboard.press("Shift+ArrowDown")
    page.keyboard.press("Backspace")
    expect(panel).to_have_attribute("data-state", "ok", timeout=30_000)

    page.click("#use-contract")
    expect(page).to_have_url(re.compile(r"#/provider$"))
    expect(page.locator("#with_contract")).to_be_checked()
    expect(page.locator("#contract-editor .cm-content")).to_contain_text("ALLOWED = ")
    expect(page.locator("#contract-editor .cm-content")).not_to_contain_text("import os")


def test_a_template_filled_in_by_hand_meets_a_small_cap(page: Page, market: Market):  # type: ignore[no-untyped-def]
    """With no listing chosen, a template starts the job; naming South in it breaks South's ε cap."""
    south = market.listings["south"]
    page.goto("/#/editor")
    page.locator("#template").select_option("logistic_regression")
    id_line = page.locator(".cm-content .cm-line").filter(has_text=re.compile(r'^\s*"listing_id": 1,?$'))
    expect(id_line).to_have_count(1)
    id_line.click()
    page.keyboard.press("End")
    page.keyboard.press("Backspace")  # the comma and the id; both are typed back below
    page.keyboard.press("Backspace")
    page.keyboard.type(f"{south.id},")
    panel = page.locator("#verify-panel")
    expect(panel).to_have_attribute("data-state", "violations")
    item = page.locator(f'#violations li[data-term="max_epsilon_per_job"][data-listing-id="{south.id}"]')
    expect(item.locator(".asked-value")).to_have_text("1")
    expect(item.locator(".allowed-value")).to_have_text("0.5")
    expect(page.locator(".cm-line:has(.cm-lintRange-error)").filter(has_text='"epsilon": 1')).to_have_count(1)
