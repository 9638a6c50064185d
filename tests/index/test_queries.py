"""Pages from the index: bounds, full-text search, sorts, filters, and the manifest cache."""

from __future__ import annotations

import pytest
from indexworld import World, manifest

from sterling.errors import UsageError
from sterling.index import MAX_PER_PAGE, EventQuery, JobQuery, ListingQuery, MarketIndex


@pytest.fixture
def market_of_four(world: World) -> World:
    world.publish(manifest("Fundus north", "retinal photographs from a clinic", ["healthy", "sick"], 400))
    world.publish(
        manifest("Heart rates", "wearable sensor streams", ["resting", "active"], 90),
        provider=1,
        price_per_job=5 * 10**15,
    )
    world.publish(manifest("Fundus south", "retinopathy grades", ["grade0", "grade1"], 250), cap=1.0)
    world.publish(manifest("Noise", "random labels", ["healthy", "sick"], 1000), provider=1, price_per_job=1)
    return world


def ids(page) -> list[int]:  # type: ignore[no-untyped-def]
    return [row.listing.id for row in page.items]


def test_page_bounds_are_refused_naming_the_limit():
    with pytest.raises(UsageError, match=str(MAX_PER_PAGE)):
        ListingQuery(per_page=MAX_PER_PAGE + 1)
    with pytest.raises(UsageError, match="at least 1"):
        ListingQuery(page=0)
    with pytest.raises(UsageError, match="per_page"):
        EventQuery(per_page=0)
    with pytest.raises(UsageError, match=str(MAX_PER_PAGE)):
        JobQuery(per_page=10_000)
    with pytest.raises(UsageError, match="sort must be one of"):
        ListingQuery(sort="colour")


def test_pages_carry_totals_and_stop_at_the_end(market_of_four: World, index_url: str):
    index = MarketIndex.open(index_url)
    index.sync(market_of_four.market)
    first = index.listings(ListingQuery(per_page=3))
    assert (ids(first), first.total, first.pages) == ([1, 2, 3], 4, 2)
    second = index.listings(ListingQuery(per_page=3, page=2))
    assert ids(second) == [4]
    beyond = index.listings(ListingQuery(per_page=3, page=9))
    assert (beyond.items, beyond.total) == ([], 4)
    events = index.events(EventQuery(per_page=2))
    assert len(events.items) == 2
    assert events.total == len(market_of_four.market.events())
    index.close()


def test_full_text_search_over_names_descriptions_and_classes(market_of_four: World, index_url: str):
    index = MarketIndex.open(index_url)
    index.sync(market_of_four.market)

    def search(q: str) -> list[int]:
        return ids(index.listings(ListingQuery(q=q)))

    assert search("fundus") == [1, 3]  # names
    assert search("FUND") == [1, 3]  # prefixes, any case
    assert search("wearable") == [2]  # descriptions
    assert search("sick") == [1, 4]  # classes
    assert search("fundus retinopathy") == [3]  # every word must match
    assert search("nothing-like-this") == []
    assert search("'; DROP TABLE listings; --") == []  # words only, never SQL
    assert index.listings(ListingQuery()).total == 4
    index.close()


def test_sorts_and_filters(market_of_four: World, index_url: str):
    w = market_of_four
    w.market.withdraw_listing(w.providers[0], 1)
    index = MarketIndex.open(index_url)
    index.sync(w.market)

    def q(**kw) -> list[int]:  # type: ignore[no-untyped-def]
        return ids(index.listings(ListingQuery(**kw)))

    assert q(open_only=True) == [2, 3, 4]
    assert q(provider=w.providers[1].address.lower()) == [2, 4]
    assert q(class_name="healthy") == [1, 4]
    assert q(modality="image") == []
    chain_price = {
        i: w.market.listing(i).terms.list_price(w.market.listing(i).terms.max_epsilon_per_job)
        for i in range(1, 5)
    }
    assert q(sort="price") == sorted(chain_price, key=lambda i: (chain_price[i], i))
    assert q(sort="price", descending=True) == sorted(chain_price, key=lambda i: (-chain_price[i], -i))
    assert q(sort="rows") == [2, 3, 1, 4]
    assert q(sort="published", descending=True) == [4, 3, 2, 1]
    assert q(sort="epsilon_left") == [1, 2, 3, 4]  # withdrawn still has budget left: all 5 ε
    assert q(open_only=True, class_name="healthy", q="noise") == [4]
    index.close()


def test_a_manifest_is_read_once_ever(world: World, index_url: str):
    doc = manifest("shared", "one manifest, two listings", ["a", "b"], 10)
    parent = world.publish(doc)
    world.market.derive(world.providers[0], parent, terms=world.market.listing(parent).terms)
    index = MarketIndex.open(index_url)
    assert index.sync(world.market).manifests_read == 1  # two listings, one content hash
    blob = world.put_manifest(doc)
    world.store.fs.rm(world.store._path(blob.sha256))  # gone from storage
    report = index.rebuild(world.market)
    assert (report.rebuilt, report.manifests_read) == (True, 0)
    page = index.listings(ListingQuery(q="shared"))
    assert [row.manifest["name"] for row in page.items if row.manifest] == ["shared", "shared"]
    index.close()


def test_an_unreadable_manifest_leaves_its_listing_listed(world: World, index_url: str):
    lid = world.market.publish(
        world.providers[0],
        data_uri="memory://nowhere/" + "ab" * 32,
        data_hash=b"\x01" * 32,
        sealed_key=b"k",
        terms=world.market.listing(world.publish()).terms,
        epsilon_budget=5 * 10**6,
        delta=10**13,
    )
    index = MarketIndex.open(index_url)
    report = index.sync(world.market)
    assert report.manifests_read == 2
    rows = {row.listing.id: row for row in index.listings(ListingQuery()).items}
    assert rows[lid].manifest is None
    assert rows[1].manifest is not None
    assert index.sync(world.market).manifests_read == 0  # not retried on every sync
    index.close()
