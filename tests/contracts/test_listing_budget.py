"""Listings and the privacy budget that belongs to the data, shared by every listing of it."""

from __future__ import annotations

import os

import pytest

from sterling.chain.types import Terms
from sterling.chain.units import to_delta, to_micro
from sterling.errors import ContractRevert, NotFound


def publish_raw(market, *, data_hash=None, budget=5.0, cap=2.0, delta=1e-5, policy=None, provider=None):
    return market.m.publish(
        provider or market.a.provider, data_uri="memory://x", data_hash=data_hash or os.urandom(32),
        sealed_key=os.urandom(80), terms=Terms(1, 2, to_micro(cap), policy or "0x" + "00" * 20),
        epsilon_budget=to_micro(budget), delta=to_delta(delta),
    )  # fmt: skip


def test_publish_records_terms_and_budget(market):
    lid = market.publish(budget=5, cap=2, price_per_job=7, price_per_epsilon=10**6)
    listing = market.m.listing(lid)
    assert listing.provider == market.a.provider.address
    assert listing.terms.max_epsilon_per_job == 2_000_000
    assert listing.budget.total == 5_000_000
    assert listing.budget.remaining == 5_000_000
    assert listing.open
    assert market.m.list_price(lid, 1_500_000) == 7 + 10**6 * 1_500_000 // 10**6


def test_same_data_cannot_be_published_twice(market):
    h = os.urandom(32)
    publish_raw(market, data_hash=h)
    with pytest.raises(ContractRevert, match="data already listed; derive a listing instead"):
        publish_raw(market, data_hash=h, provider=market.a.provider2)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"cap": 0}, "zero max epsilon per job"),
        ({"cap": 6, "budget": 5}, "max epsilon per job above budget"),
        ({"budget": 0}, "zero epsilon budget"),
        ({"policy": "0x" + "77" * 20}, "policy is not a contract"),
    ],
)
def test_bad_terms_are_refused(market, kwargs, reason):
    with pytest.raises(ContractRevert, match=f"marketplace: {reason}"):
        publish_raw(market, **kwargs)


def test_delta_out_of_range(market):
    with pytest.raises(ContractRevert, match="delta must be in"):
        market.m.publish(
            market.a.provider, data_uri="memory://x", data_hash=os.urandom(32), sealed_key=b"k",
            terms=Terms(1, 2, 1), epsilon_budget=5, delta=10**18,
        )  # fmt: skip


def test_derived_listings_share_one_budget(live):
    parent = live.publish(budget=3, cap=2)
    child = live.m.derive(live.a.provider, parent, terms=Terms(0, 0, to_micro(2)))
    p, c = live.m.listing(parent), live.m.listing(child)
    assert c.parent == parent
    assert c.data_hash == p.data_hash
    assert c.sealed_key == p.sealed_key
    live.submit([parent], [2.0])
    assert live.m.listing(child).budget.remaining == to_micro(1)
    with pytest.raises(ContractRevert, match="epsilon above remaining budget"):
        live.submit([child], [1.5])
    live.submit([child], [1.0])
    assert live.m.remaining_budget(p.data_hash) == 0


def test_derive_by_non_owner_or_unknown_parent_refused(market):
    parent = market.publish()
    with pytest.raises(ContractRevert, match="caller does not own the data"):
        market.m.derive(market.a.outsider, parent, terms=Terms(0, 0, 1))
    with pytest.raises(ContractRevert, match="unknown listing"):
        market.m.derive(market.a.provider, 999, terms=Terms(0, 0, 1))


def test_derived_listing_cannot_raise_or_reset_the_budget(live):
    parent = live.publish(budget=2, cap=2)
    with pytest.raises(ContractRevert, match="max epsilon per job above budget"):
        live.m.derive(live.a.provider, parent, terms=Terms(0, 0, to_micro(3)))
    jid = live.submit([parent], [2.0])
    live.m.claim_job(live.a.enclave, jid)
    live.complete(jid, payouts=[0], spent=[to_micro(2)])
    child = live.m.derive(live.a.provider, parent, terms=Terms(0, 0, to_micro(1)))
    assert not live.m.listing(child).open  # born closed: its data's budget is spent
    with pytest.raises(ContractRevert, match="budget exhausted"):
        live.submit([child], [0.5])


def test_zero_budget_closes_every_listing_of_the_data(live):
    a = live.publish(budget=1, cap=1)
    b = live.m.derive(live.a.provider, a, terms=Terms(0, 0, to_micro(1)))
    jid = live.submit([a], [1.0])
    live.m.claim_job(live.a.enclave, jid)
    receipt = live.complete(jid, payouts=[0], spent=[to_micro(1)])
    assert "BudgetExhausted" in [e.name for e in live.m.decode_logs(receipt["logs"])]
    for lid in (a, b):
        assert not live.m.is_open(lid)
        assert not live.m.listing(lid).open
        with pytest.raises(ContractRevert, match="marketplace: budget exhausted"):
            live.submit([lid], [0.1])
    assert list(live.m.listings(open_only=True)) == []


def test_withdraw_listing(market):
    lid = market.publish()
    with pytest.raises(ContractRevert, match="caller is not the provider"):
        market.m.withdraw_listing(market.a.outsider, lid)
    market.m.withdraw_listing(market.a.provider, lid)
    assert not market.m.is_open(lid)
    with pytest.raises(ContractRevert, match="listing already withdrawn"):
        market.m.withdraw_listing(market.a.provider, lid)
    with pytest.raises(ContractRevert, match="listing withdrawn"):
        market.submit([lid], [1.0])


def test_unknown_listing(market):
    with pytest.raises(NotFound):
        market.m.listing(5)
    with pytest.raises(ContractRevert, match="unknown listing"):
        market.m.quote(market.a.consumer.address, 5, 1)
