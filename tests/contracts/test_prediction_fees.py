"""Per-prediction fees: count × each listing's price per prediction to its provider, the rest by weight.

PredictionFees credits each provider `count` times the price per prediction in its listing's terms; a
payment must cover the sum, and whatever is paid beyond it is split by the weights (the settlement's
or an enclave's signed attribution), the rounding remainder to the first listing with a weight.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sterling.errors import ContractRevert

U256 = 2**256


def completed(live, weights, prices=None):
    providers = [live.a.provider, live.a.provider2, live.a.outsider][: len(weights)]
    prices = prices or [0] * len(weights)
    lids = [live.publish(provider=p, price_per_prediction=c) for p, c in zip(providers, prices, strict=True)]
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


def _attribute(live, jid, weights, *, payer, count=5, batch=b"\x01" * 32, enclave=None):
    from sterling.chain import digests

    enclave = enclave or live.a.enclave
    digest = live.m.predictions_digest(
        jid, payer=payer.address, count=count, batch_hash=batch, weights=weights
    )
    return digests.sign_digest(enclave, digest)


def test_attributed_predictions_split_by_the_enclaves_weights_once_per_batch(live):
    jid, (p1, p2) = completed(live, [1, 1])
    payer = live.a.consumer2
    sig = _attribute(live, jid, [3, 1], payer=payer)
    live.m.pay_for_attributed_predictions(
        payer, jid, count=5, batch_hash=b"\x01" * 32, weights=[3, 1],
        enclave=live.a.enclave.address, signature=sig, value=4000,
    )  # fmt: skip
    assert live.m.balance_of(p1.address) == 3000
    assert live.m.balance_of(p2.address) == 1000
    assert live.m.batch_paid(b"\x01" * 32)
    with pytest.raises(ContractRevert, match="batch already paid"):
        live.m.pay_for_attributed_predictions(
            payer, jid, count=5, batch_hash=b"\x01" * 32, weights=[3, 1],
            enclave=live.a.enclave.address, signature=sig, value=4000,
        )  # fmt: skip
    assert live.m.liabilities() == live.m.ether_balance()


def test_attributed_predictions_refuse_forged_or_moved_weights(live):
    jid, _ = completed(live, [1, 1])
    payer = live.a.consumer2
    batch = b"\x02" * 32
    sig = _attribute(live, jid, [3, 1], payer=payer, batch=batch)
    call = {"count": 5, "batch_hash": batch, "enclave": live.a.enclave.address, "value": 100}
    with pytest.raises(ContractRevert, match="attribution not signed by the enclave"):
        live.m.pay_for_attributed_predictions(payer, jid, weights=[1, 3], signature=sig, **call)
    with pytest.raises(ContractRevert, match="attribution not signed by the enclave"):
        live.m.pay_for_attributed_predictions(live.a.consumer, jid, weights=[3, 1], signature=sig, **call)
    forged = _attribute(live, jid, [3, 1], payer=payer, batch=batch, enclave=live.a.outsider)
    with pytest.raises(ContractRevert, match="signer is not a registered enclave"):
        live.m.pay_for_attributed_predictions(
            payer, jid, weights=[3, 1], signature=forged, **{**call, "enclave": live.a.outsider.address}
        )
    bad = _attribute(live, jid, [3], payer=payer, batch=batch)
    with pytest.raises(ContractRevert, match="one weight per listing"):
        live.m.pay_for_attributed_predictions(payer, jid, weights=[3], signature=bad, **call)
    assert not live.m.batch_paid(batch)


def test_predictions_digest_matches_the_contract(live):
    jid, _ = completed(live, [1, 2])
    args = {"payer": live.a.consumer.address, "count": 9, "batch_hash": b"\x07" * 32, "weights": [5, 6]}
    ours = live.m.predictions_digest(jid, **args)
    theirs = live.m.fees.contract.functions.predictions_digest(
        jid, args["payer"], args["count"], args["batch_hash"], args["weights"]
    ).call()
    assert ours == bytes(theirs)


def test_each_provider_gets_count_times_its_price_and_the_excess_by_weight(live):
    jid, (p1, p2) = completed(live, [1, 3], prices=[10, 1])
    assert live.m.prediction_price(jid) == 11
    with pytest.raises(ContractRevert, match="fees: payment below count x price"):
        live.m.pay_for_predictions(live.a.consumer2, jid, count=5, value=54)
    live.m.pay_for_predictions(live.a.consumer2, jid, count=5, value=55)  # exactly the price: no excess
    assert (live.m.balance_of(p1.address), live.m.balance_of(p2.address)) == (50, 5)
    live.m.pay_for_predictions(live.a.consumer2, jid, count=5, value=55 + 101)
    assert live.m.balance_of(p1.address) == 50 + 50 + 25 + 1  # 101 // 4, plus the remainder
    assert live.m.balance_of(p2.address) == 5 + 5 + 75
    assert live.m.liabilities() == live.m.ether_balance()


def test_attributed_predictions_pay_the_prices_first(live):
    jid, (p1, p2) = completed(live, [1, 1], prices=[2, 0])
    payer, batch = live.a.consumer2, b"\x09" * 32
    sig = _attribute(live, jid, [0, 1], payer=payer, count=10, batch=batch)
    with pytest.raises(ContractRevert, match="payment below count x price"):
        live.m.pay_for_attributed_predictions(
            payer, jid, count=10, batch_hash=batch, weights=[0, 1],
            enclave=live.a.enclave.address, signature=sig, value=19,
        )  # fmt: skip
    live.m.pay_for_attributed_predictions(
        payer, jid, count=10, batch_hash=batch, weights=[0, 1],
        enclave=live.a.enclave.address, signature=sig, value=30,
    )  # fmt: skip
    assert (live.m.balance_of(p1.address), live.m.balance_of(p2.address)) == (20, 10)


def _model(count, prices, weights, payment):  # type: ignore[no-untyped-def]
    """What PredictionFees credits (a list of shares) or why it refuses (a string), in exact integers."""
    if count == 0:
        return "zero predictions"
    if payment == 0:
        return "zero payment"
    shares, due = [], 0
    for p in prices:
        shares.append(count * p)
        due += count * p
        if count * p >= U256 or due >= U256:
            return "overflow"
    if payment < due:
        return "payment below count x price"
    excess = payment - due
    if excess:
        if sum(weights) >= U256 or any(excess * w >= U256 for w in weights):
            return "overflow"
        total = sum(weights)
        if total == 0:
            return "job has no prediction weights"
        cut = [excess * w // total for w in weights]
        shares = [s + c for s, c in zip(shares, cut, strict=True)]
        shares[next(i for i, w in enumerate(weights) if w)] += excess - sum(cut)
    return shares


u256 = st.one_of(
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=0, max_value=U256 - 1),
    st.sampled_from([2**128, 2**255, U256 - 1]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    count=st.one_of(st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=U256 - 1)),
    listings=st.lists(st.tuples(u256, u256), min_size=1, max_size=3),
    payment=st.one_of(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**21)),
)
def test_fee_splits_are_exact_and_never_above_the_payment(live, count, listings, payment):
    """Over the whole uint256 range of counts, prices and weights the chain does what the model says.

    Whenever it accepts, each provider gets at least count × its price and the shares sum to the payment.
    """
    prices = [p for p, _ in listings]
    weights = [w for _, w in listings]
    expected = _model(count, prices, weights, payment)
    snap = live.chain.snapshot()
    try:
        jid, providers = completed(live, weights, prices=prices)
        if isinstance(expected, str):
            with pytest.raises(ContractRevert) as refused:
                live.m.pay_for_predictions(live.a.consumer2, jid, count=count, value=payment)
            if expected != "overflow":
                assert expected in str(refused.value)
            return
        live.m.pay_for_predictions(live.a.consumer2, jid, count=count, value=payment)
        gained = [live.m.balance_of(p.address) for p in providers]
        assert gained == expected
        assert sum(gained) == payment
        assert all(g >= count * p for g, p in zip(gained, prices, strict=True))
        assert live.m.liabilities() == live.m.ether_balance()
    finally:
        live.chain.revert(snap)
