"""Jobs over a pool of 20 contributors through the real worker, from joining to every withdrawal.

Each contributor joins with one encrypted record sealed to the enclave; the worker trains on the
admitted records as one dataset, splits the pool's payout equally, commits the tree, settles and
finalizes. A contributor who left and one at their cap are not in the next job; every included
contributor claims with a proof and withdraws; the wei add up exactly.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from enclave_world import World, make_world, tabular
from eth_account import Account
from eth_account.signers.local import LocalAccount

from sterling.chain.pools import Pools
from sterling.chain.types import JobState
from sterling.data.dataset import Dataset, Schema
from sterling.errors import NotFound, UsageError
from sterling.sdk import pools as sdk
from sterling.sdk.consumer import submit_job
from sterling.sdk.provider import ListingTerms, choose_enclave

CONTRIBUTORS = 20


@pytest.fixture
def world(tmp_path) -> World:  # type: ignore[no-untyped-def]
    w = make_world(tmp_path)
    yield w
    w.chain.close()


def _record(seed: int) -> Dataset:
    rows = tabular(1, seed)
    return Dataset(rows.features, rows.labels, rows.schema)


def _job(world: World, listing_id: int):  # type: ignore[no-untyped-def]
    return world.job(
        [listing_id],
        training={"steps": 6, "expected_batch_size": 6, "target_epsilon": 0.8, "learning_rate": 1.0},
    )


def _run_job(world: World, listing_id: int) -> tuple[int, dict[str, Any]]:
    submitted = submit_job(
        world.market,
        world.consumer,
        world.consumer_key,
        _job(world, listing_id),
        world.store,
        trust=world.trust,
    )
    (handled,) = world.worker.poll()
    assert handled.state == "completed", handled.reason
    assert world.market.job(submitted.job_id).state is JobState.COMPLETED
    return submitted.job_id, handled.details["pools"][listing_id]


@pytest.mark.slow
def test_a_pool_job_pays_every_included_contributor_exactly(world: World) -> None:
    chain, market = world.chain, world.market
    from sterling.chain.deploy import Deployment

    pools = Pools(chain, Deployment.load(world.state).pools)
    assert pools.is_genuine(market.address)
    curator = world.providers[0]
    schema = Schema("tabular", (6,), "float32", ("healthy", "sick"), 1)
    created = sdk.create_pool(
        pools,
        curator,
        world.store,
        schema=schema,
        terms=ListingTerms(10**15, 10**15, 5.0, 2.0, 1e-5),
        name="a pool",
        description="one row each",
    )
    lid = created.listing_id
    enclave = choose_enclave(market, trust=world.trust)
    people: list[LocalAccount] = []
    for i in range(CONTRIBUTORS):
        person: LocalAccount = Account.create()
        chain.fund(person.address, 10**17)
        cap = 1.0 if i == 0 else 3.0  # contributor 0 is at their cap after one job
        sdk.join_pool(market, pools, person, world.store, lid, _record(100 + i), cap=cap, enclave=enclave)
        people.append(person)
    with pytest.raises(UsageError, match="already a member"):
        sdk.join_pool(market, pools, people[1], world.store, lid, _record(1), cap=1.0, enclave=enclave)
    with pytest.raises(UsageError, match="one row"):
        sdk.join_pool(
            market, pools, world.providers[1], world.store, lid, tabular(2, 5), cap=1.0, enclave=enclave
        )
    pools.leave(people[1], lid)  # left before any job: never used
    # A member whose record never opens (its key is sealed to nobody) is left out, not paid, and
    # does not stop the pool's jobs.
    bogus: LocalAccount = Account.create()
    chain.fund(bogus.address, 10**17)
    junk = world.store.put_bytes(b"not a sealed record")
    bogus_index = pools.join(
        bogus, lid, uri=junk.uri, data_hash=junk.sha256, sealed_key=os.urandom(80), cap=10**6
    )

    first, shown = _run_job(world, lid)
    assert shown["dropped"] == [bogus_index]
    assert shown["members"] == CONTRIBUTORS - 1  # all but the one who left (and the bogus one)
    second_excluded = {people[0].address, people[1].address}
    pools.leave(people[2], lid)  # left after the first job: in it, not in the next
    second, shown = _run_job(world, lid)
    assert shown["members"] == CONTRIBUTORS - 3
    second_excluded.add(people[2].address)

    consumer_refunds = 0
    for job_id, excluded in ((first, {people[1].address}), (second, second_excluded)):
        payout = market.job(job_id).allocations[0].payout
        assert payout > 0
        tree = sdk.payout_tree(pools, job_id, lid)
        paid = {leaf.account for leaf in tree.leaves}
        assert paid == {p.address for p in people} - excluded
        shares = {leaf.amount for leaf in tree.leaves}
        assert shares == {payout // len(paid)}  # equal integer shares
        state = pools.payout(job_id, lid)
        assert state.finalized
        assert state.available == tree.total
        consumer_refunds += payout - tree.total
        for person in people:
            if person.address in paid:
                claimed = sdk.claim(pools, person, job_id, lid, tree=tree)
                assert claimed.amount == payout // len(paid)
                assert not claimed.already
                assert sdk.claim(pools, person, job_id, lid, tree=tree).already
            else:
                with pytest.raises(NotFound, match="no share"):
                    sdk.claim(pools, person, job_id, lid, tree=tree)
        assert pools.payout(job_id, lid).claimed == tree.total

    # People 0 and 1 are out of the second job; 0 was charged, 1 never.
    budget = market.budget(created.data_hash)
    m0 = sdk.member(pools, lid, people[0].address)
    assert m0.spent(budget) == min(budget.spent, m0.cap)
    assert not m0.admitted(budget)
    assert market.job(first).allocations[0].spent > 0

    owed = sum(pools.balance_of(p.address) for p in people)
    assert pools.ether_balance() == pools.liabilities() == owed + consumer_refunds
    assert pools.balance_of(world.consumer.address) == consumer_refunds
    for person in people:
        expected = pools.balance_of(person.address)
        if expected:
            before = pools.ether_balance()
            assert pools.withdraw(person) == expected
            assert pools.ether_balance() == before - expected
    assert pools.ether_balance() == pools.liabilities() == consumer_refunds
    assert market.balance_of(pools.address) == 0
    assert market.ether_balance() == market.liabilities()
