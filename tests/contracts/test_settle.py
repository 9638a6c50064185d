"""Settlement: only the holding enclave, once, with its signature; payouts and ε bounded."""

from __future__ import annotations

import os

import pytest

from sterling.chain import digests
from sterling.chain.types import JobState
from sterling.chain.units import to_micro
from sterling.errors import ContractRevert

ETH = 10**18


def test_complete_pays_refunds_charges_and_publishes_the_key_and_the_receipt(claimed):
    live, jid, (a, b) = claimed
    receipt_hash = os.urandom(32)
    receipt = live.complete(
        jid,
        payouts=[ETH // 100, 3 * ETH // 100],
        spent=[900_000, 2_000_000],
        weights=[1, 3],
        receipt_hash=receipt_hash,
    )
    job = live.m.job(jid)
    assert job.state is JobState.COMPLETED
    assert len(job.sealed_model_key) == 80
    assert job.model_uri == "memory://model"
    assert [x.payout for x in job.allocations] == [ETH // 100, 3 * ETH // 100]
    assert [x.weight for x in job.allocations] == [1, 3]
    assert [x.spent for x in job.allocations] == [900_000, 2_000_000]
    assert live.m.balance_of(live.a.provider.address) == ETH // 100
    assert live.m.balance_of(live.a.provider2.address) == 3 * ETH // 100
    assert live.m.balance_of(live.a.consumer.address) == ETH // 10 - 4 * ETH // 100
    la, lb = live.m.listing(a), live.m.listing(b)
    assert (la.budget.spent, la.budget.reserved) == (900_000, 0)
    assert (lb.budget.spent, lb.budget.reserved) == (2_000_000, 0)
    names = [e.name for e in live.m.decode_logs(receipt["logs"])]
    assert names.count("Payout") == 2
    assert names.count("EpsilonReleased") == 2
    assert names[-1] == "JobCompleted"
    (completed,) = [e for e in live.m.decode_logs(receipt["logs"]) if e.name == "JobCompleted"]
    assert completed.args["receipt_hash"] == receipt_hash
    assert completed.args["receipt_uri"] == "memory://receipt"
    assert live.m.liabilities() == live.m.ether_balance() == ETH // 10


def test_a_second_completion_is_refused(claimed):
    live, jid, _ = claimed
    live.complete(jid, payouts=[0, 0], spent=[0, 0])
    with pytest.raises(ContractRevert, match="job is not claimed"):
        live.complete(jid, payouts=[0, 0], spent=[0, 0])


def test_a_non_enclave_cannot_complete(claimed):
    live, jid, _ = claimed
    with pytest.raises(ContractRevert, match="caller does not hold the job"):
        live.complete(jid, payouts=[0, 0], spent=[0, 0], enclave=live.a.outsider)


def test_a_signature_by_another_key_is_refused(claimed):
    live, jid, _ = claimed
    args = dict(
        result_hash=os.urandom(32),
        model_uri="m",
        sealed_model_key=b"k",
        payouts=[1, 1],
        spent=[1, 1],
        weights=[1, 1],
        receipt_hash=os.urandom(32),
    )
    forged = digests.sign_digest(live.a.outsider, live.m.settlement_digest(jid, **args))
    with pytest.raises(ContractRevert, match="settlement not signed by the enclave"):
        live.m.complete_job(live.a.enclave, jid, signature=forged, receipt_uri="r", **args)


def test_a_signature_over_another_job_other_payouts_or_another_receipt_is_refused(claimed):
    live, jid, _ = claimed
    args = dict(
        result_hash=os.urandom(32),
        model_uri="m",
        sealed_model_key=b"k",
        payouts=[1, 1],
        spent=[1, 1],
        weights=[1, 1],
        receipt_hash=os.urandom(32),
    )
    other_job = digests.sign_digest(live.a.enclave, live.m.settlement_digest(jid + 1, **args))
    with pytest.raises(ContractRevert, match="settlement not signed by the enclave"):
        live.m.complete_job(live.a.enclave, jid, signature=other_job, receipt_uri="r", **args)
    signed = digests.sign_digest(live.a.enclave, live.m.settlement_digest(jid, **args))
    for changed in ({"payouts": [2, 1]}, {"receipt_hash": os.urandom(32)}):
        with pytest.raises(ContractRevert, match="settlement not signed by the enclave"):
            live.m.complete_job(live.a.enclave, jid, signature=signed, receipt_uri="r", **{**args, **changed})
    live.m.complete_job(live.a.enclave, jid, signature=signed, receipt_uri="r", **args)  # the signed figures
    assert live.m.job(jid).state is JobState.COMPLETED


def test_payouts_above_escrow_and_epsilon_above_reservation(claimed):
    live, jid, _ = claimed
    with pytest.raises(ContractRevert, match="payouts above escrow"):
        live.complete(jid, payouts=[ETH // 10, 1], spent=[0, 0])
    with pytest.raises(ContractRevert, match="epsilon above reservation"):
        live.complete(jid, payouts=[0, 0], spent=[to_micro(1) + 1, 0])
    with pytest.raises(ContractRevert, match="one payout and weight per listing"):
        live.complete(jid, payouts=[0], spent=[0, 0])
    with pytest.raises(ContractRevert, match="one payout and weight per listing"):
        live.complete(jid, payouts=[0, 0], spent=[0, 0], weights=[1, 1, 1])
    with pytest.raises(ContractRevert, match="one epsilon per listing"):
        live.complete(jid, payouts=[0, 0], spent=[0])
    live.complete(jid, payouts=[ETH // 20, ETH // 20], spent=[to_micro(1), to_micro(2)])  # exactly the limits
    assert live.m.balance_of(live.a.consumer.address) == 0


def test_an_empty_receipt_hash_is_refused_and_a_receipt_settles(claimed):
    live, jid, _ = claimed
    with pytest.raises(ContractRevert, match="empty receipt hash"):
        live.complete(jid, payouts=[0, 0], spent=[0, 0], receipt_hash=bytes(32))
    assert live.m.job(jid).state is JobState.CLAIMED
    live.complete(jid, payouts=[0, 0], spent=[0, 0], receipt_hash=b"\x01" * 32)
    assert live.m.job(jid).state is JobState.COMPLETED


def test_withdraw_sends_ether(claimed):
    live, jid, _ = claimed
    live.complete(jid, payouts=[ETH // 100, 0], spent=[0, 0])
    w3, who = live.chain.w3, live.a.provider.address
    before = w3.eth.get_balance(who)
    assert live.m.withdraw(live.a.provider) == ETH // 100
    assert live.m.balance_of(who) == 0
    assert w3.eth.get_balance(who) > before  # the payout minus gas
    with pytest.raises(ContractRevert, match="nothing to withdraw"):
        live.m.withdraw(live.a.provider)
    assert live.m.liabilities() == live.m.ether_balance()
