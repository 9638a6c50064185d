"""Failure: the holder gives up. The consumer gets the whole escrow back; ε is charged only for what ran.

`claimed` is one job of 0.1 ether on two listings, ε 1 and 2 reserved.
"""

from __future__ import annotations

import os

import pytest

from sterling.chain.types import ZERO32, JobState
from sterling.chain.units import to_micro
from sterling.errors import ContractRevert

ETH = 10**18


def _failed_event(live, jid):  # type: ignore[no-untyped-def]
    (ev,) = [e for e in live.m.job_events(jid) if e.name == "JobFailed"]
    return ev


def test_fail_without_a_charge_refunds_everything_and_releases_the_reservation(claimed):
    live, jid, (a, b) = claimed
    with pytest.raises(ContractRevert, match="caller does not hold the job"):
        live.m.fail_job(live.a.outsider, jid, reason="x")
    with pytest.raises(ContractRevert, match="empty reason"):
        live.m.fail_job(live.a.enclave, jid, reason="")
    live.m.fail_job(live.a.enclave, jid, reason="verifier: epsilon above cap")
    job = live.m.job(jid)
    assert job.state is JobState.FAILED
    assert [x.spent for x in job.allocations] == [0, 0]
    assert live.m.balance_of(live.a.consumer.address) == ETH // 10
    for lid in (a, b):
        assert (live.m.listing(lid).budget.reserved, live.m.listing(lid).budget.spent) == (0, 0)
    failed = _failed_event(live, jid)
    assert failed.args["reason"] == "verifier: epsilon above cap"
    assert (failed.args["receipt_hash"], failed.args["receipt_uri"]) == (ZERO32, "")
    assert live.m.liabilities() == live.m.ether_balance()
    with pytest.raises(ContractRevert, match="job is not claimed"):
        live.complete(jid, payouts=[0, 0], spent=[0, 0])


def test_fail_without_a_charge_refuses_a_receipt(claimed):
    live, jid, _ = claimed
    with pytest.raises(ContractRevert, match="receipt without a charge"):
        live.m.fail_job(live.a.enclave, jid, reason="x", receipt_hash=os.urandom(32))
    assert live.m.job(jid).state is JobState.CLAIMED


def test_fail_with_a_charge_charges_it_releases_the_rest_and_refunds_the_escrow(claimed):
    live, jid, (a, b) = claimed
    before = {lid: live.m.listing(lid).budget for lid in (a, b)}
    receipt_hash = os.urandom(32)
    live.m.fail_job(
        live.a.enclave,
        jid,
        reason="training: the sandbox crashed",
        spent=[250_000, to_micro(2)],  # part of the first reservation, all of the second
        receipt_hash=receipt_hash,
        receipt_uri="memory://receipt",
    )
    job = live.m.job(jid)
    assert job.state is JobState.FAILED
    assert [x.spent for x in job.allocations] == [250_000, to_micro(2)]
    assert [x.payout for x in job.allocations] == [0, 0]
    for lid, charge, reserved in ((a, 250_000, to_micro(1)), (b, to_micro(2), to_micro(2))):
        budget = live.m.listing(lid).budget
        assert budget.spent == before[lid].spent + charge
        assert budget.reserved == before[lid].reserved - reserved == 0
    assert live.m.balance_of(live.a.consumer.address) == ETH // 10
    assert live.m.balance_of(live.a.provider.address) == live.m.balance_of(live.a.provider2.address) == 0
    events = live.m.job_events(jid)
    released = [(e.args["reserved"], e.args["charged"]) for e in events if e.name == "EpsilonReleased"]
    assert released == [(to_micro(1), 250_000), (to_micro(2), to_micro(2))]
    assert [e.args["amount"] for e in events if e.name == "Refund"] == [ETH // 10]
    failed = _failed_event(live, jid)
    assert failed.args["reason"] == "training: the sandbox crashed"
    assert (failed.args["receipt_hash"], failed.args["receipt_uri"]) == (receipt_hash, "memory://receipt")
    assert live.m.liabilities() == live.m.ether_balance()


def test_a_charged_failure_that_spends_the_budget_closes_the_data(live):
    lid = live.publish(budget=1, cap=1)
    jid = live.submit([lid], [1.0])
    live.m.claim_job(live.a.enclave, jid)
    live.m.fail_job(live.a.enclave, jid, reason="x", spent=[to_micro(1)], receipt_hash=os.urandom(32))
    assert "BudgetExhausted" in [e.name for e in live.m.events()]
    assert not live.m.is_open(lid)


@pytest.mark.parametrize(
    ("spent", "receipt_hash", "reason"),
    [
        ([to_micro(1) + 1, 0], b"\x01" * 32, "epsilon above reservation"),
        ([0, to_micro(2) + 1], b"\x01" * 32, "epsilon above reservation"),
        ([0], b"\x01" * 32, "one epsilon per listing"),
        ([0, 0, 0], b"\x01" * 32, "one epsilon per listing"),
        ([1, 1], ZERO32, "empty receipt hash"),
    ],
    ids=["above the first reservation", "above the second", "too few", "too many", "no receipt"],
)
def test_fail_refuses_a_bad_charge_and_leaves_the_job_claimed(claimed, spent, receipt_hash, reason):
    live, jid, (a, _) = claimed
    with pytest.raises(ContractRevert, match=reason):
        live.m.fail_job(live.a.enclave, jid, reason="x", spent=spent, receipt_hash=receipt_hash)
    assert live.m.job(jid).state is JobState.CLAIMED
    assert (live.m.listing(a).budget.reserved, live.m.listing(a).budget.spent) == (to_micro(1), 0)


def test_only_the_holder_fails_a_job_with_a_charge(claimed):
    live, jid, (a, _) = claimed
    live.register(live.a.enclave2)
    charge = dict(reason="x", spent=[1, 1], receipt_hash=os.urandom(32), receipt_uri="memory://r")
    for who in (live.a.outsider, live.a.enclave2, live.a.consumer):
        with pytest.raises(ContractRevert, match="caller does not hold the job"):
            live.m.fail_job(who, jid, **charge)
    assert live.m.listing(a).budget.spent == 0
    live.m.fail_job(live.a.enclave, jid, **charge)
    assert live.m.listing(a).budget.spent == 1
