"""Pools: a pool is one Marketplace listing of many contributors, each with a cap and consent.

Every path has a positive and a negative test; the cap rule is checked by a property test that
runs random jobs (concurrent ones too) over members with random caps and join times.
"""

from __future__ import annotations

import os

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pooling import ETH, PoolMarket, make_pool

from sterling.chain.merkle import PayoutTree
from sterling.chain.pools import POOL_MARKER
from sterling.chain.types import JobState
from sterling.chain.units import to_micro
from sterling.errors import ContractRevert


@pytest.fixture
def pool(live) -> PoolMarket:  # type: ignore[no-untyped-def]
    return make_pool(live)


def test_a_pool_is_a_listing_the_pools_contract_publishes(pool: PoolMarket) -> None:
    listing = pool.m.listing(pool.listing_id)
    assert listing.provider == pool.pools.address
    assert listing.budget.owner == pool.pools.address
    assert listing.sealed_key == POOL_MARKER
    info = pool.pools.pool(pool.listing_id)
    assert info.curator == pool.market.a.provider.address
    assert (info.members, info.open, info.total) == (0, True, to_micro(10.0))
    assert info.data_hash == listing.data_hash


def test_only_the_curator_closes_a_pool_and_then_nobody_joins(pool: PoolMarket) -> None:
    with pytest.raises(ContractRevert, match="pools: caller is not the curator"):
        pool.pools.close_pool(pool.market.a.outsider, pool.listing_id)
    pool.pools.close_pool(pool.market.a.provider, pool.listing_id)
    assert not pool.m.listing(pool.listing_id).active
    with pytest.raises(ContractRevert, match="pools: pool already closed"):
        pool.pools.close_pool(pool.market.a.provider, pool.listing_id)
    with pytest.raises(ContractRevert, match="pools: pool is closed"):
        pool.join()
    with pytest.raises(ContractRevert, match="marketplace: listing withdrawn"):
        pool.submit()


def test_joining_records_the_member_and_emits_the_sealed_record(pool: PoolMarket) -> None:
    who = pool.contributor()
    uri, data_hash, sealed = "memory://r/1", os.urandom(32), os.urandom(80)
    index = pool.pools.join(who, pool.listing_id, uri=uri, data_hash=data_hash, sealed_key=sealed, cap=7)
    assert index == 0
    assert pool.pools.pool(pool.listing_id).members == 1
    (member,) = pool.pools.members(pool.listing_id)
    assert (member.account, member.cap, member.joined_spent, member.left) == (who.address, 7, 0, False)
    assert (member.uri, member.data_hash, member.sealed_key) == (uri, data_hash, sealed)
    raw = pool.pools.contract.functions.members(pool.listing_id, 0).call()
    commitment = keccak(
        abi_encode(["bytes32", "bytes32", "bytes32"], [keccak(uri.encode()), data_hash, keccak(sealed)])
    )
    assert bytes(raw[4]) == commitment
    assert pool.pools.member_index(pool.listing_id, who.address) == 0
    assert pool.pools.member_index(pool.listing_id, pool.market.a.outsider.address) is None


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("cap", 0, "zero cap"),
        ("cap", to_micro(10.0) + 1, "cap above the pool's budget"),
        ("uri", "", "empty uri"),
        ("data_hash", bytes(32), "empty data hash"),
        ("sealed_key", b"", "empty sealed key"),
    ],
)
def test_a_join_with_a_bad_field_is_refused(pool: PoolMarket, field: str, value: object, reason: str) -> None:
    args: dict[str, object] = {
        "uri": "memory://r",
        "data_hash": os.urandom(32),
        "sealed_key": b"k" * 80,
        "cap": 5,
    }
    args[field] = value
    with pytest.raises(ContractRevert, match=f"pools: {reason}"):
        pool.pools.join(pool.contributor(), pool.listing_id, **args)  # type: ignore[arg-type]
    good: dict[str, object] = {"uri": "memory://r", "data_hash": os.urandom(32), "sealed_key": b"k" * 80}
    assert pool.pools.join(pool.contributor(), pool.listing_id, cap=to_micro(10.0), **good) == 0  # type: ignore[arg-type]


def test_one_membership_per_account_and_only_in_a_pool(pool: PoolMarket) -> None:
    who = pool.contributor()
    pool.join(who)
    with pytest.raises(ContractRevert, match="pools: already a member"):
        pool.join(who)
    other = pool.market.publish()
    with pytest.raises(ContractRevert, match="pools: unknown pool"):
        pool.pools.join(who, other, uri="u", data_hash=os.urandom(32), sealed_key=b"k", cap=1)


def test_a_member_who_leaves_is_not_admitted_and_leaves_once(pool: PoolMarket) -> None:
    who = pool.contributor()
    index = pool.join(who)
    assert pool.pools.admits(pool.listing_id, index)
    with pytest.raises(ContractRevert, match="pools: not a member"):
        pool.pools.leave(pool.market.a.outsider, pool.listing_id)
    pool.pools.leave(who, pool.listing_id)
    assert not pool.pools.admits(pool.listing_id, index)
    assert pool.pools.members(pool.listing_id)[0].left
    with pytest.raises(ContractRevert, match="pools: already left"):
        pool.pools.leave(who, pool.listing_id)
    with pytest.raises(ContractRevert, match="pools: already a member"):
        pool.join(who)  # consent withdrawn is withdrawn for good


def _charge(pool: PoolMarket, job_id: int, spent: float) -> None:
    pool.claim_job(job_id)
    pool.market.complete(job_id, payouts=[0], spent=[to_micro(spent)])
    pool.pools.finalize(pool.market.a.outsider, job_id, pool.listing_id)


def test_a_member_at_their_cap_is_excluded_for_good(pool: PoolMarket) -> None:
    capped = pool.join(cap=1.0)
    roomy = pool.join(cap=5.0)
    _charge(pool, pool.submit(1.0), 1.0)
    assert pool.pools.member_spent(pool.listing_id, capped) == to_micro(1.0)
    assert pool.pools.member_spent(pool.listing_id, roomy) == to_micro(1.0)
    pool.submit(0.5)  # the next job's reservation would take the capped member past their cap
    assert not pool.pools.admits(pool.listing_id, capped)
    assert pool.pools.admits(pool.listing_id, roomy)
    late = pool.join(cap=0.5)  # joined after the charge: it does not count against them
    assert pool.pools.member(pool.listing_id, late).joined_spent == to_micro(1.0)
    assert pool.pools.admits(pool.listing_id, late)
    assert pool.pools.member_spent(pool.listing_id, late) == 0


def test_concurrent_reservations_count_against_the_cap(pool: PoolMarket) -> None:
    member = pool.join(cap=1.5)
    pool.submit(1.0)
    assert pool.pools.admits(pool.listing_id, member)
    pool.submit(1.0)  # both could charge 1.0: 2.0 would pass the cap
    assert not pool.pools.admits(pool.listing_id, member)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("join"), st.integers(1, 30)),  # cap, tenths of ε
            st.tuples(st.just("submit"), st.integers(1, 20)),  # ε reserved, tenths
            st.tuples(st.just("claim"), st.integers(0, 9)),
            st.tuples(st.just("settle"), st.integers(0, 9), st.integers(0, 100)),  # % of the reservation
            st.tuples(st.just("fail"), st.integers(0, 9)),
        ),
        min_size=3,
        max_size=18,
    )
)
def test_no_member_is_ever_charged_past_their_cap(live, ops) -> None:  # type: ignore[no-untyped-def]
    """Members are included at claim by the rule; the ε of the jobs that used each stays within their cap,
    and `member_spent` bounds it from above."""
    snap = live.chain.snapshot()
    try:
        pool = make_pool(live, budget=20.0, cap=2.0)
        used: dict[int, set[int]] = {}  # job -> members it included
        charged: dict[int, int] = {}  # member -> ε charged by jobs that used them
        for op in ops:
            jobs = pool.m.job_count()
            try:
                if op[0] == "join":
                    charged[pool.join(cap=op[1] / 10)] = 0
                elif op[0] == "submit":
                    pool.submit(op[1] / 10)
                elif jobs:
                    jid = (op[1] % jobs) + 1
                    if op[0] == "claim":
                        pool.claim_job(jid)
                        n = pool.pools.pool(pool.listing_id).members
                        used[jid] = {i for i in range(n) if pool.pools.admits(pool.listing_id, i)}
                    elif op[0] == "settle":
                        reserved = pool.m.job(jid).allocations[0].reserved
                        pool.market.complete(jid, payouts=[0], spent=[reserved * op[2] // 100])
                        for i in used.get(jid, ()):
                            charged[i] += pool.m.job(jid).allocations[0].spent
                    else:
                        pool.m.fail_job(live.a.enclave, jid, reason="test")
            except ContractRevert:
                pass
        for i, total in charged.items():
            member = pool.pools.member(pool.listing_id, i)
            assert total <= member.cap, (i, total, member.cap)
            assert total <= pool.pools.member_spent(pool.listing_id, i) <= member.cap
    finally:
        live.chain.revert(snap)


def test_the_pools_contract_takes_ether_only_from_the_marketplace(pool: PoolMarket) -> None:
    with pytest.raises(ContractRevert, match="pools: ether only from the marketplace"):
        pool.market.chain.transactor.send(
            pool.market.a.outsider, to=pool.pools.address, data=b"", value=1, function="send", gas=100_000
        )


def test_only_the_holding_enclave_commits_while_the_job_is_claimed(pool: PoolMarket) -> None:
    pool.join()
    jid = pool.submit()
    tree = PayoutTree.build(
        job_id=jid, listing_id=pool.listing_id, payees=[(pool.contributors[0].address, 1)]
    )
    commit = dict(root=tree.root, total=tree.total, tree_uri="memory://t")
    with pytest.raises(ContractRevert, match="pools: job is not claimed"):
        pool.pools.commit_payouts(pool.market.a.enclave, jid, pool.listing_id, **commit)  # type: ignore[arg-type]
    pool.claim_job(jid)
    with pytest.raises(ContractRevert, match="pools: caller does not hold the job"):
        pool.pools.commit_payouts(pool.market.a.outsider, jid, pool.listing_id, **commit)  # type: ignore[arg-type]
    with pytest.raises(ContractRevert, match="pools: unknown pool"):
        pool.pools.commit_payouts(pool.market.a.enclave, jid, pool.market.publish(), **commit)  # type: ignore[arg-type]
    with pytest.raises(ContractRevert, match="pools: empty root"):
        pool.pools.commit_payouts(
            pool.market.a.enclave, jid, pool.listing_id, root=bytes(32), total=1, tree_uri="t"
        )
    pool.pools.commit_payouts(pool.market.a.enclave, jid, pool.listing_id, **commit)  # type: ignore[arg-type]
    assert pool.pools.payout(jid, pool.listing_id).root == tree.root
    pool.market.complete(jid, payouts=[1], spent=[1])
    with pytest.raises(ContractRevert, match="pools: job is not claimed"):
        pool.pools.commit_payouts(pool.market.a.enclave, jid, pool.listing_id, **commit)  # type: ignore[arg-type]


def test_finalize_waits_for_completion_and_runs_once(pool: PoolMarket) -> None:
    pool.join()
    jid = pool.submit()
    pool.claim_job(jid)
    with pytest.raises(ContractRevert, match="pools: job is not completed"):
        pool.pools.finalize(pool.market.a.outsider, jid, pool.listing_id)
    price = pool.m.job(jid).allocations[0].price
    pool.settle(jid, None, payout=price, spent=1)
    with pytest.raises(ContractRevert, match="pools: already finalized"):
        pool.pools.finalize(pool.market.a.outsider, jid, pool.listing_id)


def test_finalize_without_a_root_refunds_the_consumer_everything(pool: PoolMarket) -> None:
    pool.join()
    jid = pool.submit()
    pool.claim_job(jid)
    price = pool.m.job(jid).allocations[0].price
    pool.settle(jid, None, payout=price, spent=1)
    consumer = pool.market.a.consumer
    assert pool.pools.balance_of(consumer.address) == price
    assert pool.pools.payout(jid, pool.listing_id).available == 0
    assert pool.pools.ether_balance() == pool.pools.liabilities() == price
    assert pool.m.balance_of(pool.pools.address) == 0  # pulled from the Marketplace
    before = pool.market.chain.w3.eth.get_balance(consumer.address)
    assert pool.pools.withdraw(consumer) == price
    assert pool.market.chain.w3.eth.get_balance(consumer.address) > before
    assert (
        pool.pools.balance_of(consumer.address) == 0 == pool.pools.liabilities() == pool.pools.ether_balance()
    )
    with pytest.raises(ContractRevert, match="pools: nothing to withdraw"):
        pool.pools.withdraw(consumer)


def test_a_root_below_the_payout_refunds_the_rest_and_one_above_is_capped(pool: PoolMarket) -> None:
    who = [pool.contributor() for _ in range(2)]
    for w in who:
        pool.join(w)
    for total_shift in (-10, +10):
        jid = pool.submit()
        pool.claim_job(jid)
        price = pool.m.job(jid).allocations[0].price
        amount = (price + total_shift) // 2
        tree = PayoutTree.build(
            job_id=jid, listing_id=pool.listing_id, payees=[(w.address, amount) for w in who]
        )
        before = pool.pools.balance_of(pool.market.a.consumer.address)
        pool.settle(jid, tree, payout=price, spent=1)
        state = pool.pools.payout(jid, pool.listing_id)
        assert state.available == min(tree.total, price)
        assert pool.pools.balance_of(pool.market.a.consumer.address) - before == price - state.available
        assert state.available == (tree.total if total_shift < 0 else price)


def test_a_stale_root_of_an_enclave_that_lost_the_job_does_not_count(pool: PoolMarket) -> None:
    market = pool.market
    market.register(market.a.enclave2)
    pool.join()
    jid = pool.submit()
    pool.claim_job(jid)
    tree = PayoutTree.build(
        job_id=jid, listing_id=pool.listing_id, payees=[(pool.contributors[0].address, 10)]
    )
    pool.pools.commit_payouts(market.a.enclave, jid, pool.listing_id, root=tree.root, total=10, tree_uri="t")
    market.chain.advance_time(601)
    market.m.claim_job(market.a.enclave2, jid)  # the lease ran out; another enclave takes over
    price = pool.m.job(jid).allocations[0].price
    market.complete(jid, payouts=[price], spent=[1], enclave=market.a.enclave2)
    pool.pools.finalize(market.a.outsider, jid, pool.listing_id)
    assert pool.pools.payout(jid, pool.listing_id).available == 0
    assert pool.pools.balance_of(market.a.consumer.address) == price


def test_finalize_refuses_a_job_that_does_not_use_the_pool(pool: PoolMarket) -> None:
    other = pool.market.publish()
    jid = pool.market.submit([other], [1.0])
    pool.claim_job(jid)
    pool.market.complete(jid, payouts=[0], spent=[0])
    with pytest.raises(ContractRevert, match="pools: job does not use this pool"):
        pool.pools.finalize(pool.market.a.outsider, jid, pool.listing_id)
    assert pool.m.job(jid).state is JobState.COMPLETED


def test_escrow_adds_up_across_a_pool_job_and_a_plain_listing(pool: PoolMarket) -> None:
    who = [pool.contributor() for _ in range(3)]
    for w in who:
        pool.join(w)
    plain = pool.market.publish(provider=pool.market.a.provider2)
    jid = pool.market.submit([pool.listing_id, plain], [1.0, 1.0], value=ETH // 10)
    pool.claim_job(jid)
    job = pool.m.job(jid)
    pool_price, plain_price = (a.price for a in job.allocations)
    share = pool_price // 3
    tree = PayoutTree.build(job_id=jid, listing_id=pool.listing_id, payees=[(w.address, share) for w in who])
    pool.pools.commit_payouts(
        pool.market.a.enclave, jid, pool.listing_id, root=tree.root, total=tree.total, tree_uri="t"
    )
    pool.market.complete(jid, payouts=[pool_price, plain_price], spent=[1, 1])
    for i, w in enumerate(who):
        pool.pools.claim(
            w, jid, pool.listing_id, index=i, account=w.address, amount=share, proof=tree.proof(i)
        )
        assert pool.pools.withdraw(w) == share
    refund = pool.pools.balance_of(pool.market.a.consumer.address)
    assert refund == pool_price - 3 * share
    assert pool.pools.liabilities() == pool.pools.ether_balance() == refund
    assert pool.m.balance_of(pool.market.a.provider2.address) == plain_price
    assert pool.m.liabilities() == pool.m.ether_balance()
