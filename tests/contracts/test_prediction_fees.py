"""Per-prediction fees split among a completed job's providers by the recorded weights."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sterling.errors import ContractRevert


def completed(live, weights):
    providers = [live.a.provider, live.a.provider2, live.a.outsider][: len(weights)]
    lids = [live.publish(provider=p) for p in providers]
    jid = live.submit(lids, [1.0] * len(lids))
    live.m.claim_job(live.a.enclave, jid)
    live.complete(jid, payouts=[0] * len(lids), spent=[0] * len(lids), weights=weights)
    return jid, providers


def test_fees_split_by_weight_and_sum_to_the_payment(live):
    jid, (p1, p2, p3) = completed(live, [1, 2, 0])
    live.m.pay_for_predictions(live.a.consumer2, jid, count=10, value=1000)
    assert live.m.balance_of(p1.address) == 333 + 1  # rounding dust to the first weighted provider
    assert live.m.balance_of(p2.address) == 666
    assert live.m.balance_of(p3.address) == 0
    fees = [e for e in live.m.events() if e.name == "PredictionFee"]
    assert sum(e.args["amount"] for e in fees) == 1000
    assert live.m.liabilities() == live.m.ether_balance()


def test_fee_refusals(live):
    lid = live.publish()
    pending = live.submit([lid], [1.0])
    with pytest.raises(ContractRevert, match="job is not completed"):
        live.m.pay_for_predictions(live.a.consumer, pending, count=1, value=10)
    jid, _ = completed(live, [0, 0])
    with pytest.raises(ContractRevert, match="job has no prediction weights"):
        live.m.pay_for_predictions(live.a.consumer, jid, count=1, value=10)
    jid, _ = completed(live, [1])
    with pytest.raises(ContractRevert, match="zero payment"):
        live.m.pay_for_predictions(live.a.consumer, jid, count=1, value=0)
    with pytest.raises(ContractRevert, match="zero predictions"):
        live.m.pay_for_predictions(live.a.consumer, jid, count=0, value=10)
    with pytest.raises(ContractRevert, match="unknown job"):
        live.m.pay_for_predictions(live.a.consumer, 999, count=1, value=10)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    weights=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=3).filter(any),
    payment=st.integers(min_value=1, max_value=10**18),
)
def test_shares_always_sum_to_the_payment(live, weights, payment):
    snap = live.chain.snapshot()
    try:
        jid, providers = completed(live, weights)
        before = [live.m.balance_of(p.address) for p in providers]
        live.m.pay_for_predictions(live.a.consumer2, jid, count=1, value=payment)
        gained = [live.m.balance_of(p.address) - b for p, b in zip(providers, before, strict=True)]
        assert sum(gained) == payment
        total = sum(weights)
        for g, w in zip(gained, weights, strict=True):
            assert g >= payment * w // total
            if w == 0:
                assert g == 0
    finally:
        live.chain.revert(snap)
