"""The market index: the chain's events in a database, so every read is a bounded query.

`MarketIndex.sync(market)` follows the Marketplace, its registry and its fee contract from the
deployment block (resuming where it stopped, repairing reorgs, rebuilding after a chain
restart); `listings`, `events`, `jobs` and `enclaves` answer pages of at most `MAX_PER_PAGE`.
SQLite is the embedded default; PostgreSQL through a URL. See docs/index.md.
"""

from sterling.index.follow import SyncReport
from sterling.index.market import MarketIndex, default_url
from sterling.index.queries import (
    LISTING_SORTS,
    MAX_PER_PAGE,
    EnclaveRow,
    EventQuery,
    JobQuery,
    JobRow,
    ListingQuery,
    ListingRow,
    Page,
    check_page,
)

__all__ = [
    "LISTING_SORTS",
    "MAX_PER_PAGE",
    "EnclaveRow",
    "EventQuery",
    "JobQuery",
    "JobRow",
    "ListingQuery",
    "ListingRow",
    "MarketIndex",
    "Page",
    "SyncReport",
    "check_page",
    "default_url",
]
