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
    theirs = live.m.contract.functions.predictions_digest(
        jid, args["payer"], args["count"], args["batch_hash"], args["weights"]
    ).call()
    assert ours == bytes(theirs)
