"""Nothing locked forever: unclaimed jobs expire, leases are bounded, revoked enclaves let go at once.

Every test runs on the embedded EVM (eth-tester time travel) and on anvil (evm_increaseTime and
evm_mine), through the `market` fixture's parameters.
"""

from __future__ import annotations

import pytest

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO_ADDRESS, JobState
from sterling.chain.units import to_micro
from sterling.errors import ContractRevert

WEI_PER_ETH = 10**18


def test_an_unclaimed_job_expires_with_a_full_refund_and_every_reservation_released(live) -> None:  # type: ignore[no-untyped-def]
    a, b = live.publish(), live.publish(provider=live.a.provider2)
    jid = live.submit([a, b], [1.0, 2.0], value=WEI_PER_ETH // 10)
    job = live.m.job(jid)
    assert job.pending_deadline == live.chain.now() + live.m.max_pending_seconds()
    with pytest.raises(ContractRevert, match="marketplace: job not expired"):
        live.m.expire_job(live.a.outsider, jid)
    live.chain.advance_time(job.pending_deadline - live.chain.now() + 1)
    with pytest.raises(ContractRevert, match="marketplace: job expired"):
        live.m.claim_job(live.a.enclave, jid)
    block = live.chain.w3.eth.block_number + 1
    live.m.expire_job(live.a.outsider, jid)  # anyone may
    job = live.m.job(jid)
    assert job.state is JobState.CANCELLED
    assert live.m.balance_of(live.a.consumer.address) == WEI_PER_ETH // 10
    for lid in (a, b):
        listing = live.m.listing(lid)
        assert (listing.budget.reserved, listing.budget.spent) == (0, 0)
        assert live.m.is_open(lid)
    names = [e.name for e in live.m.events(from_block=block)]
    assert names == ["JobExpired", "EpsilonReleased", "EpsilonReleased", "Refund", "JobCancelled"]
    with pytest.raises(ContractRevert, match="job is not pending or claimed"):
        live.m.expire_job(live.a.outsider, jid)
    assert live.m.liabilities() == live.m.ether_balance()


def test_a_lapsed_lease_after_the_pending_deadline_refunds_instead_of_requeueing(live) -> None:  # type: ignore[no-untyped-def]
    live.m.set_lease_seconds(live.a.admin, live.m.max_lease_seconds())
    jid = live.submit([live.publish()], [1.0])
    live.m.claim_job(live.a.enclave, jid)
    deadline = live.m.job(jid).pending_deadline
    while live.chain.now() + live.m.lease_seconds() < deadline:  # the enclave keeps its lease alive
        live.chain.advance_time(live.m.lease_seconds() - 60)
        live.m.extend_lease(live.a.enclave, jid)
    live.chain.advance_time(live.m.lease_seconds() + 1)
    live.m.expire_job(live.a.outsider, jid)
    assert live.m.job(jid).state is JobState.CANCELLED
    assert live.m.balance_of(live.a.consumer.address) == live.m.job(jid).escrow


def test_no_live_enclave_holds_a_job_past_its_pending_deadline_plus_the_run_bound(live) -> None:  # type: ignore[no-untyped-def]
    # Before, heartbeats renewed a lease without end: an enclave (the admin's own, say) that kept
    # sending them kept the escrow and the reservations locked for as long as it liked.
    live.m.set_lease_seconds(live.a.admin, live.m.max_lease_seconds())
    jid = live.submit([live.publish()], [1.0])
    live.m.claim_job(live.a.enclave, jid)
    end = live.m.job(jid).pending_deadline + live.m.max_run_seconds()
    for _ in range(4 * (end - live.chain.now()) // live.m.lease_seconds()):  # twice what it takes
        live.chain.advance_time(live.m.lease_seconds() // 2)
        if live.chain.now() > live.m.job(jid).lease_deadline:
            break
        live.m.report_progress(live.a.enclave, jid, step=1, steps=10, micro_epsilon=0)
        assert live.m.job(jid).lease_deadline <= end
    assert live.m.job(jid).lease_deadline == end
    with pytest.raises(ContractRevert, match="lease expired"):
        live.m.extend_lease(live.a.enclave, jid)
    live.m.expire_job(live.a.outsider, jid)
    assert live.m.job(jid).state is JobState.CANCELLED
    assert live.m.balance_of(live.a.consumer.address) == live.m.job(jid).escrow
    assert live.m.listing(live.m.job(jid).allocations[0].listing_id).budget.reserved == 0


def test_a_job_whose_enclave_was_revoked_can_be_expired_at_once(live) -> None:  # type: ignore[no-untyped-def]
    jid = live.submit([live.publish()], [1.0])
    live.m.claim_job(live.a.enclave, jid)
    with pytest.raises(ContractRevert, match="lease not expired"):
        live.m.expire_job(live.a.outsider, jid)
    live.m.revoke_enclave(live.a.admin, live.a.enclave.address)
    live.m.expire_job(live.a.outsider, jid)  # no waiting for the lease
    job = live.m.job(jid)
    assert (job.state, job.enclave) == (JobState.PENDING, ZERO_ADDRESS)
    live.register(live.a.enclave2)
    live.m.claim_job(live.a.enclave2, jid)
    # Revoking the measurement frees it as well, and the consumer may also simply cancel.
    live.m.allow_measurement(live.a.admin, live.measurement, allowed=False)
    live.m.cancel_job(live.a.consumer, jid)
    assert live.m.job(jid).state is JobState.CANCELLED


def test_the_lease_is_bounded(market) -> None:  # type: ignore[no-untyped-def]
    most = market.m.max_lease_seconds()
    assert most == 86400
    with pytest.raises(ContractRevert, match="marketplace: lease above the maximum"):
        market.m.set_lease_seconds(market.a.admin, most + 1)
    market.m.set_lease_seconds(market.a.admin, most)
    assert market.m.lease_seconds() == most
    with pytest.raises(ContractRevert, match="marketplace: lease above the maximum"):
        Marketplace.deploy(
            market.chain, market.a.admin, attestation_signer=market.a.platform.address, lease_seconds=most + 1
        )


def test_a_job_that_no_enclave_could_claim_is_refused_at_submission(live) -> None:  # type: ignore[no-untyped-def]
    # The attack: pair the victim's listing with one's own, pinned to a measurement no enclave has,
    # and the victim's budget stays reserved by a job nobody can ever claim.
    victim = live.publish(budget=2.0, cap=2.0)
    nowhere = live.publish(provider=live.a.provider2, pinned=b"\x99" * 32)
    with pytest.raises(ContractRevert, match="marketplace: pinned measurement not in force"):
        live.submit([victim, nowhere], [2.0, 1.0])
    other = live.publish(provider=live.a.provider2, pinned=b"\x98" * 32)
    with pytest.raises(ContractRevert, match="marketplace: listings pin different measurements"):
        live.submit([nowhere, other], [1.0, 1.0])
    assert live.m.listing(victim).budget.reserved == 0  # nothing reserved by the refused jobs
    # A pin on the measurement in force is a job an enclave can take.
    pinned = live.publish(provider=live.a.provider2, pinned=live.measurement)
    jid = live.submit([victim, pinned], [2.0, 1.0])
    live.m.claim_job(live.a.enclave, jid)


def test_is_open_counts_reservations(live) -> None:  # type: ignore[no-untyped-def]
    lid = live.publish(budget=2.0, cap=2.0)
    jid = live.submit([lid], [2.0])
    assert not live.m.is_open(lid)  # nothing left to reserve until the job ends
    assert not live.m.listing(lid).open
    with pytest.raises(ContractRevert, match="budget exhausted"):
        live.submit([lid], [0.5])
    live.m.cancel_job(live.a.consumer, jid)
    assert live.m.is_open(lid)
    assert live.m.listing(lid).open
    half = live.submit([lid], [1.5])
    assert live.m.is_open(lid)  # 0.5 left
    live.m.claim_job(live.a.enclave, half)
    live.complete(half, payouts=[0], spent=[to_micro(1.5)])
    live.submit([lid], [0.5])
    assert not live.m.is_open(lid)
