"""The chain node killed and restarted from its state folder, with the worker still running.

`sterling chain up` runs anvil with ``--state DIR/anvil-state.json --state-interval 1``: anvil
rewrites that file every second and on SIGTERM. So:

* stopped cleanly (SIGTERM to `sterling chain up`), the node loses nothing;
* `sterling chain up` itself SIGKILLed: anvil is SIGTERMed by the kernel (parent-death signal),
  saves and exits, so nothing is lost either, not even a transaction sent just before;
* anvil itself SIGKILLed: the restart has exactly what anvil saved last, at most one state
  interval (1 s) old. A transaction mined inside that second may be lost, and is then lost
  whole (its storage and its events together); everything older is kept.

Every listing, job, budget and balance is read through Sterling's Marketplace client (and
`sterling chain status`) before and after, and must be equal. The worker keeps running
across the restarts and settles a job submitted afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cli_world import PROVIDERS, retarget, submit
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState
from sterling.errors import ChainUnavailable

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


def ledger(m: Marketplace) -> dict[str, Any]:
    """Everything the Marketplace keeps: listings (with budgets), jobs, enclaves, balances, events."""
    listings = list(m.listings())
    jobs = list(m.jobs())
    accounts = sorted({x.provider for x in listings} | {j.consumer for j in jobs} | {j.enclave for j in jobs})
    return {
        "block": int(m.chain.w3.eth.block_number),
        "listings": listings,
        "jobs": jobs,
        "allocations": [j.allocations for j in jobs],
        "enclaves": m.enclave_count(),
        "balances": {a: m.balance_of(a) for a in accounts},
        "wallets": {a: int(m.chain.w3.eth.get_balance(a)) for a in accounts},  # type: ignore[arg-type]
        "ether": m.ether_balance(),
        "liabilities": m.liabilities(),
        "events": [(e.name, e.block, e.tx_hash) for e in m.events()],
    }


def cli_status(world: Any) -> dict[str, Any]:
    out = world.procs.run(
        "chain", "status", "--rpc-url", world.url, "--state", str(world.state), "-f", "json"
    )
    return dict(json.loads(out.stdout))


def anvil_pids(chain_up_pid: int) -> list[int]:
    """The npm launcher `sterling chain up` started and the anvil binary under it (Linux /proc)."""

    def children(pid: int) -> list[int]:
        found = []
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        return found

    launchers = children(chain_up_pid)
    return launchers + [c for p in launchers for c in children(p)]


def gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def ensure_settled_job(world: Any) -> None:
    """At least one completed job, so there are payouts, refunds and spent ε to lose."""
    m = world.market()
    if not any(j.state is JobState.COMPLETED for j in m.jobs()):
        job = submit(world.procs, world.url, world.state, world.job)
        world.wait_final([job])


def test_a_clean_stop_and_restart_loses_nothing_and_the_worker_goes_on(world):
    ensure_settled_job(world)
    before = ledger(world.market())
    world.procs.stop(world.chain, signal.SIGTERM)
    assert world.chain.returncode == 0

    again = world.restart_chain("chain-restarted")
    assert again["reused"] is True
    assert again["marketplace"] == world.market().address
    after = ledger(world.market())
    assert after == before
    shown = cli_status(world)  # and as `sterling chain status` shows it
    assert (shown["listings"], shown["jobs"]) == (len(before["listings"]), len(before["jobs"]))
    assert (shown["enclaves"], shown["escrow_and_balances_wei"]) == (
        before["enclaves"],
        before["liabilities"],
    )
    assert shown["block"] == before["block"]

    # The worker never stopped: it finds the node again and settles a new job.
    job_id = submit(
        world.procs, world.url, world.state, retarget(world.job, [world.listings["good"]], "after")
    )
    world.wait_final([job_id])
    job = world.market().job(job_id)
    assert job.state is JobState.COMPLETED
    assert job.enclave == world.worker_address


def test_sterling_chain_up_killed_hard_still_saves_everything(world):
    ensure_settled_job(world)
    m = world.market()
    provider = m.chain.dev_accounts[int(PROVIDERS[0])]
    pids = anvil_pids(world.chain.pid)
    assert pids  # the npm launcher and the anvil binary under it (or the binary alone)
    assert m.balance_of(provider.address) > 0
    m.withdraw(provider)  # sent just before the kill: anvil has not saved it on its own yet
    expected = ledger(m)
    os.killpg(world.chain.pid, signal.SIGKILL)
    world.chain.wait(10)
    assert gone(pids, timeout=15), "anvil outlived `sterling chain up`"

    again = world.restart_chain("chain-after-supervisor-kill")
    assert again["reused"] is True
    after = ledger(world.market())
    assert after == expected
    assert after["balances"][provider.address] == 0


def test_anvil_killed_hard_restarts_from_its_last_save(world):
    m = world.market()
    state_file = world.state / "anvil-state.json"
    saved = ledger(m)
    mark = time.time_ns()
    deadline = time.monotonic() + 10
    while state_file.stat().st_mtime_ns <= mark:  # one save after everything in `saved`
        assert time.monotonic() < deadline, "anvil did not save its state within 10 s"
        time.sleep(0.05)
    assert ledger(m) == saved  # nothing happened meanwhile (the worker is idle)

    provider = m.chain.dev_accounts[int(PROVIDERS[0])]
    m.chain.fund(provider.address, 10**15)  # mined inside the last state interval
    unsaved = ledger(m)
    os.killpg(os.getpgid(anvil_pids(world.chain.pid)[0]), signal.SIGKILL)  # launcher and binary
    world.chain.wait(15)
    assert world.chain.returncode == ChainUnavailable.exit_code
    assert "anvil exited unexpectedly" in world.chain_log().read_text()

    world.restart_chain("chain-after-anvil-kill")
    after = ledger(world.market())
    # Exactly one of the two saved states: the fund transfer kept whole, or lost whole.
    assert after in (saved, unsaved)
    assert after["ether"] == after["liabilities"]
    lost = after == saved
    print(f"a transaction mined {'was lost' if lost else 'survived'} when anvil was SIGKILLed right after it")
