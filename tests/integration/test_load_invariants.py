"""Many consumers at once: budgets and money hold, and every refusal says why.

Runs the machinery of `sterling bench load` in quick mode (anvil on loopback, `sterling enclave
run` workers as separate processes with a SIMULATED enclave, real sealing, DP training and
settlement on the breast-cancer split) and asserts what must hold under concurrency, read back
from the chain. It never asserts a timing: those depend on the machine.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from sterling.chain import node
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import Terms
from sterling.cli.bench import load

pytestmark = [pytest.mark.anvil, pytest.mark.slow]
bench = load("load")
CHECKS = {
    "epsilon_within_budget",
    "ether_conserved",
    "per_account_ledger_exact",
    "escrow_settled_once",
    "all_jobs_final",
    "models_open",
}


@pytest.fixture(scope="module")
def result(anvil_binary: Any) -> dict[str, Any]:
    out: dict[str, Any] = bench.run(quick=True)
    return out


def test_every_invariant_holds_after_the_load(result):
    assert set(result["checks"]) == CHECKS
    broken = [name for name, held in result["checks"].items() if not held]
    assert broken == [], result["problems"]
    assert result["invariants_held"] is True
    assert result["problems"] == []


def test_counts_add_up_and_no_accepted_job_is_lost(result):
    counts, plan = result["counts"], result["plan"]
    assert counts["submitted"] == plan["consumers"] + plan["late"]
    assert counts["submitted"] == counts["completed"] + counts["refused"] + counts["failed"]
    assert counts["failed"] == 0, result["failure_reasons"]
    assert counts["accepted"] == counts["completed"] == result["job_states"]["completed"]
    # Each budget holds `fit` reservations and half of one more, and a job charges most of what it
    # reserves, so at most `fit` jobs per listing can ever run: the rest must be refused.
    assert 1 <= counts["completed"] <= plan["fit"] * plan["listings"]
    assert counts["refused"] >= counts["submitted"] - plan["fit"] * plan["listings"]


def test_budget_refusals_name_the_budget_and_match_the_reverts_on_chain(result):
    counts, reasons = result["counts"], result["refused_reasons"]
    assert sum(reasons.values()) == counts["refused"]
    assert counts["refused_by_chain"] + counts["refused_by_verifier"] == counts["refused"]
    for reason in reasons:
        assert "budget" in reason
        assert reason.startswith(("chain: marketplace: ", "verifier: the job violates"))
    # A consumer that loses the race pays for a reverted transaction; the chain counts the same number.
    assert result["ether"]["reverted"].get("submit_job", 0) == counts["refused_by_chain"]


def test_late_consumers_are_refused_before_spending_with_the_listing_and_the_numbers(result):
    counts, plan = result["counts"], result["plan"]
    assert counts["late"] == plan["late"] >= 1
    # Once the first wave's reservations are on chain, less than one job's ε is left on every listing.
    assert counts["late_refused_by_verifier"] == plan["late"]
    late = [r for r in result["refused_reasons"] if r.startswith("verifier: ")]
    assert late
    for reason in late:
        assert re.search(r"listing \d+: ε 1 is above the 0\.\d+ left in its budget", reason), reason


def test_no_budget_is_overspent_and_nothing_stays_reserved(result):
    plan = result["plan"]
    assert len(result["budgets"]) == plan["listings"]
    for b in result["budgets"]:
        assert b["epsilon_reserved"] == 0
        assert 0 < b["epsilon_charged"] <= b["peak_committed"] <= b["epsilon_budget"]


def test_the_ether_adds_up_to_the_wei(result):
    e = result["ether"]
    assert e["end_wei"] + e["gas_wei"] == e["start_wei"]
    assert e["gas_wei"] > 0
    assert e["marketplace_wei"] == 0  # every payout and refund was withdrawn


def test_the_checks_see_an_open_job_then_its_refund_on_the_embedded_evm():
    """A control: the same checks report what is still open (not just pass), then the full refund."""
    chain = node.embedded()
    admin, platform, provider, consumer = chain.dev_accounts[:4]
    m = Marketplace.deploy(chain, admin, attestation_signer=platform.address)
    listing = m.publish(
        provider,
        data_uri="file:///d",
        data_hash=b"\x01" * 32,
        sealed_key=b"k",
        terms=Terms(10**15, 0, 500_000),
        epsilon_budget=1_000_000,
        delta=10**13,
    )
    job_id = m.submit_job(
        consumer,
        listing_ids=[listing],
        epsilons=[400_000],
        delta=10**13,
        consumer_key=b"\x02" * 32,
        job_hash=b"\x03" * 32,
        job_uri="file:///j",
        value=2 * 10**15,
    )
    people = [consumer.address, provider.address]
    budgets, problems = bench.check_epsilon(m)
    assert (budgets[0]["epsilon_reserved"], problems) == (0.4, [])
    states, problems, unfinished = bench.check_escrow(m, people)
    assert (states, problems, unfinished) == ({"pending": 1}, [], [f"job {job_id} is still pending"])
    ether, off, problems = bench.check_ether(chain, m)
    assert (ether["marketplace_wei"], off, problems) == (2 * 10**15, [], [])

    m.cancel_job(consumer, job_id)
    assert m.withdraw(consumer) == 2 * 10**15
    budgets, problems = bench.check_epsilon(m)
    assert (budgets[0]["epsilon_reserved"], budgets[0]["epsilon_charged"], problems) == (0.0, 0.0, [])
    assert bench.check_escrow(m, people) == ({"cancelled": 1}, [], [])
    ether, off, problems = bench.check_ether(chain, m)
    assert (ether["marketplace_wei"], off, problems) == (0, [], [])
    assert ether["end_wei"] + ether["gas_wei"] == ether["start_wei"]
