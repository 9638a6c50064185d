"""Long lists come a page at a time, with their totals: the market, the explorer's jobs and events,
and a job's events. The pages' addresses may ask for a page size (`?per_page=`), so a market of
a few listings pages as one of thousands would; every request for a list asks for one page."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest
from browser_world import Market
from playwright.sync_api import Page, Request, expect

pytestmark = pytest.mark.browser
LISTS = ("/api/listings", "/api/jobs", "/api/explorer/events")


def count_text(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def record_list_requests(page: Page) -> list[str]:
    """The URLs of every request the page makes for a list (not one item by id)."""
    asked: list[str] = []

    def seen(request: Request) -> None:
        path = urlparse(request.url).path
        if path in LISTS or re.fullmatch(r"/api/jobs/\d+/events", path):
            asked.append(request.url)

    page.on("request", seen)
    return asked


def assert_one_page_each(asked: list[str]) -> None:
    assert asked, "the page asked for no list"
    for url in asked:
        size = parse_qs(urlparse(url).query).get("per_page")
        assert size is not None, f"{url} asked for no page size"
        assert 1 <= int(size[0]) <= 200, url


def listing_id(market: Market, query: str) -> int:
    return int(market.api(f"/api/listings?{query}&per_page=1")["items"][0]["id"])


def test_the_market_pages_through_listings(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    total = int(market.api("/api/listings?per_page=1")["total"])
    assert total >= 2  # the world publishes two
    asked = record_list_requests(page)
    page.goto("/#/market?per_page=1")
    pager, cards = page.locator("#listings-pager"), page.locator("#listings article.listing")
    expect(pager.locator(".count")).to_have_text(count_text(total, "listing"))
    expect(pager).to_have_attribute("data-pages", str(total))
    expect(pager).to_have_attribute("data-page", "1")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-listing-id", str(listing_id(market, "sort=id&order=desc")))
    expect(pager.locator('button[data-page="previous"]')).to_be_disabled()
    shot(page, "market-pages")

    pager.locator('button[data-page="next"]').click()
    expect(pager).to_have_attribute("data-page", "2")
    second = listing_id(market, "sort=id&order=desc&page=2")
    expect(cards.first).to_have_attribute("data-listing-id", str(second))
    expect(page).to_have_url(re.compile(r"#/market\?.*page=2"))  # the address keeps the page...
    page.reload()
    expect(cards.first).to_have_attribute("data-listing-id", str(second))  # ...so a reload shows it again
    expect(pager).to_have_attribute("data-page", "2")

    pager.locator('button[data-page="first"]').click()
    expect(pager).to_have_attribute("data-page", "1")
    pager.locator('button[data-page="last"]').click()
    expect(pager).to_have_attribute("data-page", str(total))
    expect(cards.first).to_have_attribute("data-listing-id", str(listing_id(market, "sort=id&order=asc")))
    expect(pager.locator('button[data-page="next"]')).to_be_disabled()
    pager.locator(".page-input").fill("1")
    pager.locator(".page-input").press("Enter")
    expect(pager).to_have_attribute("data-page", "1")

    # A search starts again at page 1 and counts what matched, not the whole market.
    # (the world publishes two; other browser tests of the session may have derived more)
    matched = int(market.api("/api/listings?q=Biopsies&per_page=1")["total"])
    assert matched >= 2
    pager.locator('button[data-page="next"]').click()
    expect(pager).to_have_attribute("data-page", "2")
    page.fill("#filter-q", "Biopsies")
    expect(pager.locator(".count")).to_have_text(count_text(matched, "listing"))
    expect(pager).to_have_attribute("data-page", "1")
    expect(pager).to_have_attribute("data-pages", str(matched))
    page.fill("#filter-q", "no such dataset")
    expect(pager.locator(".count")).to_have_text("0 listings")
    expect(page.locator("#listings .empty")).to_contain_text("No listing matches these filters")
    assert_one_page_each(asked)


def test_the_explorer_and_a_job_show_pages_of_events(page: Page, market: Market, shot):  # type: ignore[no-untyped-def]
    market.wait_idle()  # nothing running: the totals stay put while the pages are read
    events = market.api("/api/explorer/events?per_page=2")
    jobs = market.api("/api/jobs?per_page=2")
    assert events["total"] > 2
    assert jobs["total"] >= 1
    asked = record_list_requests(page)
    page.goto("/#/explorer?per_page=2")
    events_pager, rows = page.locator("#events-pager"), page.locator("#events tbody tr")
    expect(events_pager.locator(".count")).to_have_text(count_text(events["total"], "event"))
    expect(events_pager).to_have_attribute("data-pages", str(events["pages"]))
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("data-event", events["items"][0]["name"])
    jobs_pager = page.locator("#jobs-pager")
    expect(jobs_pager.locator(".count")).to_have_text(count_text(jobs["total"], "job"))
    expect(page.locator("#jobs tbody tr")).to_have_count(min(2, jobs["total"]))
    expect(page.locator("#jobs tbody tr").first).to_have_attribute("data-job-id", str(jobs["items"][0]["id"]))

    events_pager.locator('button[data-page="next"]').click()
    expect(events_pager).to_have_attribute("data-page", "2")
    second = market.api("/api/explorer/events?per_page=2&page=2")["items"]
    expect(rows).to_have_count(len(second))
    expect(rows.first).to_have_attribute("data-event", second[0]["name"])
    expect(rows.first.locator('a[href^="#/tx/"]')).to_have_attribute("href", f"#/tx/{second[0]['tx_hash']}")
    # Choosing a kind of event starts again at page 1, with that kind's total.
    completed = market.api("/api/explorer/events?kind=JobCompleted&per_page=2")
    page.locator("#event-filter").select_option("JobCompleted")
    expect(events_pager).to_have_attribute("data-total", str(completed["total"]))
    expect(events_pager).to_have_attribute("data-page", "1")
    assert {r for r in rows.evaluate_all("rs => rs.map(r => r.dataset.event)")} <= {"JobCompleted"}
    shot(page, "explorer-pages")

    job = market.cli_job
    mine = market.api(f"/api/jobs/{job}/events?per_page=2")
    assert mine["total"] > 2  # submitted, reserved, claimed, released, paid, completed at least
    page.goto(f"/#/jobs/{job}?per_page=2")
    job_pager, job_rows = page.locator("#job-events-pager"), page.locator("#job-event-table tbody tr")
    expect(job_pager.locator(".count")).to_have_text(count_text(mine["total"], "event"))
    expect(job_rows).to_have_count(2)
    expect(job_rows.first).to_have_attribute("data-event", mine["items"][0]["name"])
    job_pager.locator('button[data-page="last"]').click()
    expect(job_pager).to_have_attribute("data-page", str(mine["pages"]))
    oldest = market.api(f"/api/jobs/{job}/events?per_page=2&page={mine['pages']}")["items"]
    expect(job_rows).to_have_count(len(oldest))
    assert job_rows.evaluate_all("rs => rs.map(r => r.dataset.event)") == [e["name"] for e in oldest]
    assert "EpsilonReserved" in [e["name"] for e in oldest]  # logged first, in the submission
    assert_one_page_each(asked)
