"""What the index must agree on with the chain: every listing, budget, job and allocation."""

from __future__ import annotations

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState
from sterling.index import MAX_PER_PAGE, JobQuery, ListingQuery, MarketIndex


def assert_matches_chain(index: MarketIndex, market: Marketplace) -> None:
    rows = index.listings(ListingQuery(per_page=MAX_PER_PAGE)).items
    assert [r.listing.id for r in rows] == list(range(1, market.listing_count() + 1))
    for row in rows:
        on_chain = market.listing(row.listing.id)
        assert row.listing.provider == on_chain.provider
        assert row.listing.data_hash == on_chain.data_hash
        assert row.listing.data_uri == on_chain.data_uri
        assert row.listing.terms == on_chain.terms
        assert row.listing.parent == on_chain.parent
        assert row.listing.active == on_chain.active
        assert row.listing.budget == on_chain.budget
        assert row.listing.open == on_chain.open == market.is_open(row.listing.id)
    jobs = index.jobs(JobQuery(per_page=MAX_PER_PAGE))
    assert jobs.total == market.job_count()
    for job in jobs.items:
        on_chain = market.job(job.id)
        assert job.state is JobState(on_chain.state)
        assert job.consumer == on_chain.consumer
        assert job.escrow == on_chain.escrow
        assert job.listing_ids == on_chain.listing_ids
