"""Jobs: atomic escrow and reservation, cancel, claim with a lease, expiry and takeover."""

from __future__ import annotations

import os

import pytest

from sterling.chain.types import JobState
from sterling.chain.units import to_delta, to_micro
from sterling.errors import ContractRevert


def test_submit_escrows_and_reserves_atomically(live):
    a, b = live.publish(budget=5), live.publish(provider=live.a.provider2, budget=3)
    jid = live.submit([a, b], [1.0, 2.0], value=10**18)
    job = live.m.job(jid)
    assert job.state is JobState.PENDING
    assert job.escrow == 10**18
    assert [x.reserved for x in job.allocations] == [to_micro(1), to_micro(2)]
    assert live.m.listing(a).budget.reserved == to_micro(1)
    assert live.m.listing(b).budget.remaining == to_micro(1)
    assert live.m.ether_balance() == live.m.liabilities() == 10**18


def test_a_failing_listing_reserves_nothing_anywhere(live):
    a, b = live.publish(budget=5), live.publish(budget=1, cap=1)
    with pytest.raises(ContractRevert, match="epsilon above per-job cap"):
        live.submit([a, b], [1.0, 1.5], value=10**18)
    assert live.m.listing(a).budget.reserved == 0
    assert live.m.job_count() == 0
    assert live.m.ether_balance() == 0


def test_two_jobs_racing_for_the_last_of_a_budget(live):
    lid = live.publish(budget=2, cap=2)
    live.submit([lid], [1.5])
    with pytest.raises(ContractRevert, match="marketplace: epsilon above remaining budget"):
        live.submit([lid], [1.0], consumer=live.a.consumer2)
    live.submit([lid], [0.5], consumer=live.a.consumer2)  # exactly what is left
    with pytest.raises(ContractRevert, match="marketplace: budget exhausted"):
        live.submit([lid], [0.1])


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"epsilons": [0.0]}, "zero epsilon"),
        ({"epsilons": [2.5]}, "epsilon above per-job cap"),
        ({"delta": 1e-3}, "delta above listing delta"),
        ({"value": 1}, "escrow below price"),
    ],
)
def test_submission_checks(live, kwargs, reason):
    lid = live.publish(cap=2, delta=1e-5)
    kwargs = dict(kwargs)
    epsilons = kwargs.pop("epsilons", [1.0])
    with pytest.raises(ContractRevert, match=f"marketplace: {reason}"):
        live.submit([lid], epsilons, **kwargs)


def test_malformed_submissions(live):
    lid = live.publish()
    base = {"delta": to_delta(1e-5), "consumer_key": os.urandom(32), "job_hash": os.urandom(32),
            "job_uri": "memory://j", "value": 10**18}  # fmt: skip
    cases = [
        ({"listing_ids": [lid, lid], "epsilons": [1, 1]}, "duplicate listing"),
        ({"listing_ids": [], "epsilons": []}, "no listings"),
        ({"listing_ids": [lid], "epsilons": [1, 2]}, "one epsilon and price per listing"),
        ({"listing_ids": [lid], "epsilons": [1], "max_prices": [1, 2]}, "one epsilon and price per listing"),
        ({"listing_ids": [77], "epsilons": [1]}, "unknown listing"),
        ({"listing_ids": [lid], "epsilons": [1], "consumer_key": bytes(32)}, "empty consumer key"),
        ({"listing_ids": [lid], "epsilons": [1], "job_hash": bytes(32)}, "empty job hash"),
        ({"listing_ids": [lid], "epsilons": [1], "delta": 0}, "zero delta"),
    ]
    for overrides, reason in cases:
        kw = {**base, **overrides}
        kw.setdefault("max_prices", [10**18] * len(kw["listing_ids"]))
        with pytest.raises(ContractRevert, match=f"marketplace: {reason}"):
            live.m.submit_job(live.a.consumer, **kw)


def test_cancel_before_claim_refunds_and_releases(live):
    lid = live.publish()
    jid = live.submit([lid], [1.0], value=5 * 10**16)
    with pytest.raises(ContractRevert, match="caller is not the consumer"):
        live.m.cancel_job(live.a.outsider, jid)
    live.m.cancel_job(live.a.consumer, jid)
    assert live.m.job(jid).state is JobState.CANCELLED
    assert live.m.listing(lid).budget.reserved == 0
    assert live.m.balance_of(live.a.consumer.address) == 5 * 10**16
    with pytest.raises(ContractRevert, match="job is not pending"):
        live.m.cancel_job(live.a.consumer, jid)


def test_cancel_refused_while_claimed(live):
    jid = live.submit([live.publish()], [1.0])
    live.m.claim_job(live.a.enclave, jid)
    with pytest.raises(ContractRevert, match="job is not pending"):
        live.m.cancel_job(live.a.consumer, jid)


def test_claim_by_non_enclave_and_double_claim(live):
    jid = live.submit([live.publish()], [1.0])
    with pytest.raises(ContractRevert, match="caller is not a registered enclave"):
        live.m.claim_job(live.a.outsider, jid)
    deadline = live.m.claim_job(live.a.enclave, jid)
    job = live.m.job(jid)
    assert job.state is JobState.CLAIMED
    assert job.enclave == live.a.enclave.address
    assert deadline == job.lease_deadline == live.chain.now() + 600
    live.register(live.a.enclave2)
    with pytest.raises(ContractRevert, match="job is leased"):
        live.m.claim_job(live.a.enclave2, jid)
    with pytest.raises(ContractRevert, match="unknown job"):
        live.m.claim_job(live.a.enclave, 99)


def test_lease_expiry_lets_another_enclave_take_over(live):
    jid = live.submit([live.publish()], [1.0])
    live.m.claim_job(live.a.enclave, jid)
    live.register(live.a.enclave2)
    with pytest.raises(ContractRevert, match="lease not expired"):
        live.m.expire_job(live.a.outsider, jid)
    live.chain.advance_time(601)
    live.m.claim_job(live.a.enclave2, jid)  # takes over directly
    assert live.m.job(jid).enclave == live.a.enclave2.address
    with pytest.raises(ContractRevert, match="caller does not hold the job"):
        live.complete(jid, payouts=[0], spent=[0])  # the first enclave lost it


def test_expire_returns_the_job_to_the_pool(live):
    jid = live.submit([live.publish()], [1.0])
    live.m.claim_job(live.a.enclave, jid)
    live.chain.advance_time(601)
    live.m.expire_job(live.a.outsider, jid)
    job = live.m.job(jid)
    assert job.state is JobState.PENDING
    assert job.enclave == "0x0000000000000000000000000000000000000000"
    with pytest.raises(ContractRevert, match="job not expired"):
        live.m.expire_job(live.a.outsider, jid)
    live.m.cancel_job(live.a.consumer, jid)  # pending again, so the consumer may leave


def test_extend_lease_only_by_the_holder_before_it_runs_out(live):
    jid = live.submit([live.publish()], [1.0])
    first = live.m.claim_job(live.a.enclave, jid)
    live.chain.advance_time(300)
    second = live.m.extend_lease(live.a.enclave, jid)
    assert second > first
    live.register(live.a.enclave2)
    with pytest.raises(ContractRevert, match="caller does not hold the job"):
        live.m.extend_lease(live.a.enclave2, jid)
    live.chain.advance_time(700)
    with pytest.raises(ContractRevert, match="lease expired"):
        live.m.extend_lease(live.a.enclave, jid)


def test_pinned_measurement(live):
    other = bytes.fromhex("66" * 32)
    live.m.allow_measurement_now(live.a.admin, other)
    pinned = live.publish(pinned=other)
    jid = live.submit([pinned], [1.0])
    with pytest.raises(ContractRevert, match="listing pins another measurement"):
        live.m.claim_job(live.a.enclave, jid)
    live.register(live.a.enclave2, measurement=other)
    live.m.claim_job(live.a.enclave2, jid)


def test_progress_is_reported_by_the_holder_and_renews_the_lease(live):
    jid = live.submit([live.publish()], [1.0])
    first = live.m.claim_job(live.a.enclave, jid)
    live.chain.advance_time(300)
    renewed = live.m.report_progress(live.a.enclave, jid, step=10, steps=40, micro_epsilon=250_000)
    assert renewed > first
    assert live.m.job(jid).lease_deadline == renewed
    progress = [e for e in live.m.events() if e.name == "JobProgress"]
    assert [
        (e.args["job_id"], e.args["step"], e.args["steps"], e.args["micro_epsilon"]) for e in progress
    ] == [(jid, 10, 40, 250_000)]
    with pytest.raises(ContractRevert, match="step beyond steps"):
        live.m.report_progress(live.a.enclave, jid, step=41, steps=40, micro_epsilon=0)
    live.register(live.a.enclave2)
    with pytest.raises(ContractRevert, match="caller does not hold the job"):
        live.m.report_progress(live.a.enclave2, jid, step=11, steps=40, micro_epsilon=0)
    live.chain.advance_time(700)
    with pytest.raises(ContractRevert, match="lease expired"):
        live.m.report_progress(live.a.enclave, jid, step=11, steps=40, micro_epsilon=0)


def test_progress_needs_a_claimed_job(live):
    jid = live.submit([live.publish()], [1.0])
    with pytest.raises(ContractRevert, match="job is not claimed"):
        live.m.report_progress(live.a.enclave, jid, step=0, steps=1, micro_epsilon=0)
