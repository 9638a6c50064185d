"""Attacks on the Marketplace with hand-built transactions, on the embedded EVM and on anvil.

The attacker uses web3 and eth-account only (`attackers.Raw`), so nothing of
Sterling's client can refuse on the chain's behalf: whatever stops these
attacks is the contract itself. The enclave is a real worker on a simulated
TEE, registered with a real attestation.
"""

from __future__ import annotations

import os
import threading

from attackers import ETH, Arena, tabular
from eth_account.messages import encode_defunct

from sterling.chain.deploy import ensure_deployment
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState, Terms
from sterling.chain.units import to_delta, to_micro

DELTA = to_delta(1e-5)
ANY_PRICE = 2**256 - 1  # the attacker agrees to any price: only the escrow check stands in its way


def _submit(arena: Arena, consumer, listing: int, micro: int, *, value: int = ETH // 10):  # type: ignore[no-untyped-def]
    return arena.raw(consumer).send(
        "submit_job",
        [listing],
        [micro],
        [ANY_PRICE],
        DELTA,
        os.urandom(32),
        os.urandom(32),
        "memory://job",
        value=value,
    )


def test_a_raw_submission_asking_more_epsilon_than_the_terms_is_reverted(any_arena: Arena) -> None:
    arena = any_arena
    lid = arena.list_data(tabular(60, 1), arena.account(), budget=3.0, cap=2.0)
    data_hash = arena.market.listing(lid).data_hash
    attacker = arena.account()
    jobs, ether = arena.market.job_count(), arena.market.ether_balance()
    refused = {
        "above the per-job cap": (
            _submit(arena, attacker, lid, to_micro(2) + 1),
            "epsilon above per-job cap",
        ),
        "escrow below the price": (_submit(arena, attacker, lid, to_micro(1), value=1), "escrow below price"),
        "zero epsilon": (_submit(arena, attacker, lid, 0), "zero epsilon"),
    }
    # Two honest jobs take 2.5 of the 3.0; the attacker then asks 1.0 of the 0.5 left.
    assert _submit(arena, arena.account(), lid, to_micro(2)).ok
    assert _submit(arena, arena.account(), lid, to_micro(0.5)).ok
    refused["above the remaining budget"] = (
        _submit(arena, attacker, lid, to_micro(1)),
        "epsilon above remaining budget",
    )
    for what, (sent, reason) in refused.items():
        assert not sent.ok, what
        assert f"marketplace: {reason}" in sent.reason, what
    budget = arena.market.budget(data_hash)
    assert (budget.reserved, budget.spent) == (to_micro(2.5), 0)
    assert arena.market.job_count() == jobs + 2
    assert arena.market.ether_balance() == ether + 2 * (ETH // 10) == arena.market.liabilities()


def _tx_of(arena: Arena, event: str, **match: object):  # type: ignore[no-untyped-def]
    """The decoded call of the transaction that emitted `event` with these arguments."""
    for ev in arena.market.events():
        if ev.name == event and all(ev.args.get(k) == v for k, v in match.items()):
            tx = arena.chain.w3.eth.get_transaction(ev.tx_hash)  # type: ignore[arg-type]
            (contract,) = [c.contract for c in arena.market.contracts if c.address == ev.address]
            fn, args = contract.decode_function_input(tx["input"])
            return fn.fn_name, args
    raise AssertionError(f"no {event} {match}")


def _to_registry(raw, market: Marketplace):  # type: ignore[no-untyped-def]
    """The attacker's raw sender, aimed at the market's EnclaveRegistry instead."""
    raw.contract = raw.w3.eth.contract(address=market.registry.address, abi=market.registry.contract.abi)
    return raw


def test_a_real_enclaves_attestation_replayed_by_an_attacker_or_on_another_marketplace_is_refused(
    any_arena: Arena, tmp_path
) -> None:
    arena = any_arena
    fn, args = _tx_of(arena, "EnclaveRegistered", enclave=arena.worker.address)
    assert fn == "register_enclave"
    attestation = (args["measurement"], args["hpke_public_key"], args["attestation"])
    attacker = arena.account()
    stolen = _to_registry(arena.raw(attacker), arena.market).send("register_enclave", *attestation)
    assert not stolen.ok
    assert "attestation not signed by the attestation signer" in stolen.reason
    assert not arena.market.is_enclave(attacker.address)
    # The same enclave key replays it on a second Marketplace that trusts the same platform.
    other_state = tmp_path / "other"
    other_state.mkdir()
    other, _ = ensure_deployment(
        arena.chain,
        other_state,
        deployer=arena.admin,
        attestation_signer=arena.market.attestation_signer(),
        measurements=[attestation[0]],
    )
    second = Marketplace.at(arena.chain, other.marketplace)
    replayed = _to_registry(arena.raw(arena.worker.account, second), second).send(
        "register_enclave", *attestation
    )
    arena.chain.transactor.reset()  # the worker's own client must re-read the nonce this used
    assert not replayed.ok
    assert "attestation not signed by the attestation signer" in replayed.reason
    assert second.enclave_count() == 0


def test_an_attacker_cannot_settle_fail_expire_or_cancel_a_job_the_enclave_holds(any_arena: Arena) -> None:
    arena = any_arena
    lid = arena.list_data(tabular(60, 2), arena.account())
    consumer = arena.account()
    # A job whose body is not in storage: the real worker claims it and fails it on chain.
    bogus = _submit(arena, consumer, lid, to_micro(1))
    assert bogus.ok
    bogus_id = arena.market.job_count()
    handled = {h.job_id: h for h in arena.worker.poll()}
    assert handled[bogus_id].state == "failed"
    assert "job body is missing or corrupt" in arena.failed_reason(bogus_id)
    fn, fail_args = _tx_of(arena, "JobFailed", job_id=bogus_id)
    assert fn == "fail_job"

    victim = _submit(arena, consumer, lid, to_micro(1))
    assert victim.ok
    job_id = arena.market.job_count()
    escrow = arena.market.job(job_id).escrow
    attacker = arena.account()
    raw = arena.raw(attacker)
    # The worker's own fail_job call, re-targeted at the victim's pending job.
    assert "job is not claimed" in raw.send("fail_job", job_id, *list(fail_args.values())[1:]).reason
    assert "caller is not a registered enclave" in raw.send("claim_job", job_id).reason
    arena.market.claim_job(arena.worker.account, job_id)  # the worker takes it, as it would to train
    settlement = [
        os.urandom(32), "memory://stolen", os.urandom(80), [escrow], [to_micro(1)], [1],
        os.urandom(32), "memory://receipt",
    ]  # fmt: skip
    digest = arena.market.settlement_digest(
        job_id,
        result_hash=settlement[0],
        model_uri=settlement[1],
        sealed_model_key=settlement[2],
        payouts=settlement[3],
        spent=settlement[4],
        weights=settlement[5],
        receipt_hash=settlement[6],
    )
    signature = bytes(attacker.sign_message(encode_defunct(primitive=digest)).signature)
    attempts = {
        "complete_job": (
            raw.send("complete_job", job_id, *settlement, signature),
            "caller does not hold the job",
        ),
        "fail_job": (
            raw.send("fail_job", job_id, "stolen", [], bytes(32), ""),
            "caller does not hold the job",
        ),
        "fail_job charging the budget": (
            raw.send("fail_job", job_id, "burnt", [to_micro(1)], os.urandom(32), "memory://receipt"),
            "caller does not hold the job",
        ),
        "report_progress": (raw.send("report_progress", job_id, 1, 1, 0), "caller does not hold the job"),
        "extend_lease": (raw.send("extend_lease", job_id), "caller does not hold the job"),
        "expire_job": (raw.send("expire_job", job_id), "lease not expired"),
        "cancel_job": (raw.send("cancel_job", job_id), "caller is not the consumer"),
        "withdraw": (raw.send("withdraw"), "nothing to withdraw"),
        "consumer cancels": (arena.raw(consumer).send("cancel_job", job_id), "job is not pending"),
    }
    for what, (sent, reason) in attempts.items():
        assert not sent.ok, what
        assert reason in sent.reason, (what, sent.reason)
    job = arena.market.job(job_id)
    assert (job.state, job.enclave, job.escrow) == (JobState.CLAIMED, arena.worker.address, escrow)
    assert arena.market.listing(lid).budget.spent == 0
    arena.market.fail_job(arena.worker.account, job_id, reason="test over")  # leave nothing claimable
    assert arena.market.ether_balance() == arena.market.liabilities()


def _race(arena: Arena, listings: list[int], micro: int, n: int) -> list[bool]:
    """`n` consumers, each its own account and thread, submit at once; which got in."""
    consumers = [arena.account(1) for _ in range(n)]
    results: list[bool] = [False] * n
    reasons: list[str] = [""] * n
    start = threading.Barrier(n)

    def go(i: int) -> None:
        start.wait(timeout=30)
        sent = _submit(arena, consumers[i], listings[i % len(listings)], micro, value=ETH // 100)
        results[i], reasons[i] = sent.ok, sent.reason

    threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for ok, reason in zip(results, reasons, strict=True):
        assert ok or "epsilon above remaining budget" in reason or "budget exhausted" in reason, reason
    return results


def test_many_concurrent_jobs_and_derived_listings_never_overspend_one_budget(any_arena: Arena) -> None:
    arena = any_arena
    provider = arena.account()
    parent = arena.list_data(tabular(60, 3), provider, budget=3.0, cap=1.0, price_per_job=10**12)
    children = [arena.market.derive(provider, parent, terms=Terms(0, 0, to_micro(1))) for _ in range(2)]
    data_hash = arena.market.listing(parent).data_hash
    listings = [parent, *children]
    # Nobody can re-list the data to get a fresh budget, nor raise the cap past the budget.
    attacker = arena.raw(arena.account())
    listing = arena.market.listing(parent)
    terms = (0, 0, to_micro(3), "0x" + "00" * 20, bytes(32), 0)
    republish = attacker.send(
        "publish", listing.data_uri, data_hash, listing.sealed_key, bytes(32), terms, to_micro(100), DELTA
    )
    assert "data already listed" in republish.reason
    assert "caller does not own the data" in attacker.send("derive", parent, bytes(32), terms).reason
    too_big = arena.raw(provider).send(
        "derive", parent, bytes(32), (0, 0, to_micro(3) + 1, terms[3], terms[4], 0)
    )
    assert "max epsilon per job above budget" in too_big.reason

    # 0.4 at a time out of 3.0: exactly 7 of 10 racing consumers get in, across all three listings.
    first = _race(arena, listings, to_micro(0.4), 10)
    assert sum(first) == 7
    budget = arena.market.budget(data_hash)
    assert (budget.total, budget.reserved, budget.spent) == (to_micro(3), to_micro(2.8), 0)

    # The enclave settles some (charging less than reserved) and fails the others, charging some of
    # those for what ran: the rest of every reservation is freed.
    pending = [
        j
        for j in range(1, arena.market.job_count() + 1)
        if arena.market.job(j).state is JobState.PENDING
        and arena.market.job(j).allocations[0].listing_id in listings
    ]
    for k, job_id in enumerate(pending):
        arena.market.claim_job(arena.worker.account, job_id)
        if k % 4 == 1:
            arena.market.fail_job(arena.worker.account, job_id, reason="test")
        elif k % 4 == 3:
            arena.market.fail_job(
                arena.worker.account, job_id, reason="test", spent=[to_micro(0.1)],
                receipt_hash=os.urandom(32), receipt_uri="memory://receipt",
            )  # fmt: skip
        else:
            arena.market.complete_job(
                arena.worker.account, job_id, result_hash=os.urandom(32), model_uri="memory://m",
                sealed_model_key=os.urandom(80), payouts=[10**12], spent=[to_micro(0.3)], weights=[1],
                receipt_hash=os.urandom(32), receipt_uri="memory://receipt",
            )  # fmt: skip
    budget = arena.market.budget(data_hash)
    settled, charged = (len(pending) + 1) // 2, len(pending) // 4
    assert (budget.reserved, budget.spent) == (0, settled * to_micro(0.3) + charged * to_micro(0.1))

    second = _race(arena, listings, to_micro(0.4), 8)
    left = to_micro(3) - budget.spent
    assert sum(second) == left // to_micro(0.4)
    budget = arena.market.budget(data_hash)
    assert budget.spent + budget.reserved <= budget.total
    reserved = sum(
        e.args["micro_epsilon"]
        for e in arena.market.events()
        if e.name == "EpsilonReserved" and e.args["data_hash"] == data_hash
    )
    assert reserved == (sum(first) + sum(second)) * to_micro(0.4)
    assert arena.market.ether_balance() == arena.market.liabilities()
