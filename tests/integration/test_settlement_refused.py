"""A settlement the chain refuses is failed with its reason and what ran charged, never retried forever.

Before, the worker took any revert of `complete_job` for a lost lease: the job stayed claimed, its
heartbeats kept the consumer from cancelling, and it retrained on every poll (issue 17, item 1).
The fault here is injected into the worker's payout split (an enclave bug the chain must catch);
the chain, the contract and its revert are real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from enclave_world import make_world, tabular

from sterling.chain.types import JobState
from sterling.enclave import settling as settling_module
from sterling.sdk.consumer import submit_job
from sterling.sdk.receipts import check_receipt


@pytest.fixture
def world(tmp_path: Path) -> Any:
    w = make_world(tmp_path)
    yield w
    w.chain.close()


def test_a_settlement_the_chain_refuses_fails_the_job_charges_what_ran_and_refunds(world, monkeypatch):
    ids = [world.list_data(tabular(400, 1), provider=0), world.list_data(tabular(300, 2), provider=1)]
    job_id = submit_job(
        world.market, world.consumer, world.consumer_key, world.job(ids), world.store, trust=world.trust
    ).job_id
    escrow = world.market.job(job_id).escrow
    before = world.market.balance_of(world.consumer.address)

    def above_escrow(**kw: Any) -> list[int]:
        return [escrow] * len(kw["prices"])  # together twice the escrow: the chain must refuse it

    monkeypatch.setattr(settling_module, "payout_plan", above_escrow)
    (handled,) = world.worker.poll()

    assert handled.state == "failed"
    job = world.market.job(job_id)
    assert job.state is JobState.FAILED
    (event,) = [e for e in world.market.job_events(job_id) if e.name == "JobFailed"]
    reason = event.args["reason"]
    assert reason.startswith("the chain refused the settlement")
    assert "payouts above escrow" in reason
    # What ran is charged (the model trained on the data), the escrow is refunded in full.
    assert all(0 < a.spent <= a.reserved for a in job.allocations)
    assert world.market.balance_of(world.consumer.address) == before + escrow
    for listing_id in ids:
        budget = world.market.listing(listing_id).budget
        assert budget.reserved == 0
        assert budget.spent > 0
    checked = check_receipt(world.market, job_id)
    assert checked.ok, checked.problems
    assert checked.receipt is not None
    assert checked.receipt.outcome == "failed"
    # Nothing left to retry: the next poll finds no job.
    assert world.worker.poll() == []
