"""The follower on a real chain: it derives the chain's state from its events, resumes, and rebuilds."""

from __future__ import annotations

from checks import assert_matches_chain
from indexworld import World, manifest

from sterling.chain import node
from sterling.chain.types import JobState
from sterling.index import EventQuery, JobQuery, ListingQuery, MarketIndex


def test_index_follows_listings_budgets_jobs_and_enclaves(world: World, index_url: str):
    world.register_enclave()
    a = world.publish(manifest("north clinic", "fundus photographs", ["healthy", "sick"], 400))
    b = world.publish(provider=1, cap=1.5)
    child = world.market.derive(world.providers[0], a, terms=world.market.listing(b).terms)
    job = world.submit([a, b], [1.0, 1.5])
    world.run(job, spent=[0.5, 1.0])
    pending = world.submit([child], [1.0])
    world.market.withdraw_listing(world.providers[1], b)

    index = MarketIndex.open(index_url)
    report = index.sync(world.market)

    assert report.rebuilt
    assert report.to_block == world.chain.w3.eth.block_number
    assert report.events == len(world.market.events())
    assert_matches_chain(index, world.market)
    jobs = {j.id: j for j in index.jobs(JobQuery()).items}
    assert jobs[job].state is JobState.COMPLETED
    assert (jobs[job].step, jobs[job].steps) == (5, 10)
    assert jobs[pending].state is JobState.PENDING
    assert jobs[pending].listing_ids == [child]
    (enclave,) = index.enclaves(registered_only=True)
    assert (enclave.address, enclave.signer) == (world.enclave.address, world.platform.address)
    assert enclave.measurement == world.market.enclave(world.enclave.address).measurement
    payouts = index.events(EventQuery(kind="Payout", job_id=job))
    assert payouts.total == 2
    assert sorted(int(e["args"]["amount"]) for e in payouts.items) == sorted(
        a.payout for a in world.market.job(job).allocations
    )
    index.close()


def test_a_sync_resumes_where_the_last_one_stopped(world: World, index_url: str):
    world.publish()
    first = MarketIndex.open(index_url)
    done = first.sync(world.market)
    first.close()
    lid = world.publish(provider=1)
    world.submit([lid], [1.0])
    again = MarketIndex.open(index_url)  # a new process: only the database remembers
    report = again.sync(world.market)
    assert report.from_block == done.to_block + 1
    assert not report.rebuilt
    assert report.rolled_back == 0
    assert report.events == len(world.market.events(from_block=done.to_block + 1))
    assert again.events(EventQuery()).total == len(world.market.events())
    assert again.sync(world.market).events == 0  # nothing new: nothing applied
    assert_matches_chain(again, world.market)
    again.close()


def test_a_replaced_chain_is_detected_and_the_index_rebuilt(world: World, index_url: str, tmp_path):
    for _ in range(3):
        world.publish()
    index = MarketIndex.open(index_url)
    index.sync(world.market)
    assert index.listings(ListingQuery()).total == 3
    fresh = World.deploy(node.embedded(), tmp_path / "second")  # same deployer, so the same addresses
    assert fresh.market.address == world.market.address
    fresh.publish(manifest("only one", "after the restart", ["x"], 5))
    report = index.sync(fresh.market)
    assert report.rebuilt
    assert index.listings(ListingQuery()).total == 1
    assert_matches_chain(index, fresh.market)
    fresh.chain.close()
    index.close()
