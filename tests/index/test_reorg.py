"""Reorgs on anvil: blocks the index applied are replaced, and it rolls back to the common ancestor.

anvil's evm_snapshot / evm_revert drop the newest blocks; mining different transactions after
the revert gives different blocks at the same heights, as a reorg on a real network does.
"""

from __future__ import annotations

import pytest
from checks import assert_matches_chain
from indexworld import World, manifest

from sterling.chain.types import JobState
from sterling.index import EventQuery, JobQuery, ListingQuery, MarketIndex

pytestmark = pytest.mark.anvil


def _mine(world: World, blocks: int) -> None:
    for _ in range(blocks):
        world.chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def test_a_reorg_of_a_few_blocks_is_rolled_back_and_reapplied(anvil_world: World, index_url: str):
    w = anvil_world
    w.register_enclave()
    a = w.publish(manifest("kept", "before the fork", ["x", "y"], 10))
    job = w.submit([a], [1.0])
    index = MarketIndex.open(index_url)
    index.sync(w.market)
    fork = w.chain.snapshot()
    b = w.publish(manifest("orphaned", "only on the old branch", ["z"], 5), provider=1)
    w.run(job, spent=[0.5])
    w.market.withdraw_listing(w.providers[0], a)
    index.sync(w.market)
    assert index.listings(ListingQuery(q="orphaned")).total == 1
    old_head = int(w.chain.w3.eth.block_number)

    w.chain.revert(fork)
    c = w.publish(manifest("replacement", "on the new branch", ["z"], 7), provider=1, price_per_job=7)
    _mine(w, old_head - int(w.chain.w3.eth.block_number) + 1)  # the new branch is longer
    assert c == b  # the same listing id, different data: only a correct rollback shows the new one
    report = index.sync(w.market)

    assert report.rolled_back > 0
    assert not report.rebuilt
    assert index.listings(ListingQuery(q="orphaned")).total == 0
    assert index.listings(ListingQuery(q="replacement")).total == 1
    (row,) = index.jobs(JobQuery()).items
    assert row.state is JobState.PENDING  # its claim and completion were on the dropped branch
    assert index.events(EventQuery(kind="JobCompleted")).total == 0
    assert index.events(EventQuery()).total == len(w.market.events())
    assert_matches_chain(index, w.market)
    index.close()


def test_a_reorg_at_the_same_height_is_noticed(anvil_world: World, index_url: str):
    w = anvil_world
    w.publish()
    index = MarketIndex.open(index_url)
    index.sync(w.market)
    fork = w.chain.snapshot()
    w.publish(manifest("first", "branch one", ["a"], 1))
    index.sync(w.market)
    height = int(w.chain.w3.eth.block_number)
    w.chain.revert(fork)
    w.publish(manifest("second", "branch two", ["a"], 2))
    assert int(w.chain.w3.eth.block_number) == height  # same height, another block
    report = index.sync(w.market)
    assert report.rolled_back >= 1
    assert [r.manifest["name"] for r in index.listings(ListingQuery(q="branch")).items if r.manifest] == [
        "second"
    ]
    assert_matches_chain(index, w.market)
    index.close()
