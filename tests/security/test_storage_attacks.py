"""Attacks through storage and through sealed keys and job bodies moved where they do not belong.

The real worker runs each job: it fetches from real storage (a local
folder), opens sealed keys with its key manager and trains with DP-SGD.
Every attack must fail its job with a reason that names what was wrong,
refund the consumer, charge no ε, and leave the worker able to run the
next good job.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from attackers import ETH, Arena, tabular
from eth_account.signers.local import LocalAccount

from sterling.chain.deploy import ensure_deployment
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState
from sterling.crypto import seal
from sterling.enclave.tee import SimulatedTee
from sterling.enclave.worker import Worker, WorkerOptions
from sterling.errors import EnclaveError
from sterling.sdk.consumer import fetch_result, submit_job
from sterling.sdk.provider import ListingTerms, choose_enclave, seal_dataset


def _blob(arena: Arena, digest: bytes) -> Path:
    return Path(arena.store.root) / digest.hex()[:2] / digest.hex()


def _refunded_and_uncharged(arena: Arena, job_id: int) -> None:
    job = arena.market.job(job_id)
    assert job.state is JobState.FAILED
    refunds = [e for e in arena.market.job_events(job_id) if e.name == "Refund"]
    assert [e.args["amount"] for e in refunds] == [job.escrow]
    assert not [e for e in arena.market.job_events(job_id) if e.name == "Payout"]
    for a in job.allocations:
        assert a.spent == 0
        assert arena.market.listing(a.listing_id).budget.reserved == 0


def test_tampered_truncated_or_swapped_blobs_fail_the_job_and_the_worker_goes_on(arena: Arena) -> None:
    a_provider, b_provider, consumer = arena.account(), arena.account(), arena.account()
    a = arena.list_data(tabular(120, 1), a_provider)
    b = arena.list_data(tabular(150, 2), b_provider)
    a_hash, b_hash = (arena.market.listing(x).data_hash for x in (a, b))
    a_file, b_file = _blob(arena, a_hash), _blob(arena, b_hash)
    a_bytes, b_bytes = a_file.read_bytes(), b_file.read_bytes()

    def flip(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 1
        path.write_bytes(bytes(raw))

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:-1000])

    def swap(_: Path) -> None:  # the storage operator swaps the two providers' ciphertexts
        a_file.write_bytes(b_bytes)
        b_file.write_bytes(a_bytes)

    attacks: dict[str, tuple[Callable[[Path], None], str]] = {
        "a flipped bit": (flip, "its data is missing or corrupt in storage"),
        "a truncated blob": (truncate, "its data is missing or corrupt in storage"),
        "swapped blobs": (swap, "its data is missing or corrupt in storage"),
    }
    for what, (attack, reason) in attacks.items():
        job_id = submit_job(
            arena.market, consumer, arena.consumer_key, arena.job([a, b]), arena.store, trust=arena.trust
        ).job_id
        attack(a_file)
        (handled,) = arena.worker.poll()
        assert handled.state == "failed", what
        assert reason in arena.failed_reason(job_id), what
        assert "content hash differs" in arena.failed_reason(job_id), what
        _refunded_and_uncharged(arena, job_id)
        a_file.write_bytes(a_bytes)
        b_file.write_bytes(b_bytes)

    # The sealed job body tampered with in storage: refused before anything is opened.
    job_id = submit_job(
        arena.market, consumer, arena.consumer_key, arena.job([a]), arena.store, trust=arena.trust
    ).job_id
    body = _blob(arena, arena.market.job(job_id).job_hash)
    flip(body)
    (handled,) = arena.worker.poll()
    assert "the job body is missing or corrupt in storage" in arena.failed_reason(job_id)
    _refunded_and_uncharged(arena, job_id)

    # Restored, both providers' data trains a model that only the consumer opens. (Long enough to
    # learn in every draw of the enclave's secret noise: 8 steps at σ 12 fell below 0.7 now and then.)
    learns = arena.job([a, b], training={"steps": 30, "noise_multiplier": 8.0})
    good = submit_job(
        arena.market, consumer, arena.consumer_key, learns, arena.store, trust=arena.trust
    ).job_id
    (handled,) = arena.worker.poll()
    assert handled.state == "completed", handled.reason
    bundle = fetch_result(arena.market, good, arena.consumer_key)
    test = tabular(300, 9)
    assert float((bundle.predict_proba(test.features).argmax(axis=1) == test.labels).mean()) > 0.7

    # The worker's real settlement, enclave signature and all, replayed by an attacker: refused.
    (completed,) = [e for e in arena.market.job_events(good) if e.name == "JobCompleted"]
    tx = arena.chain.w3.eth.get_transaction(completed.tx_hash)  # type: ignore[arg-type]
    fn, args = arena.market.contract.decode_function_input(tx["input"])
    assert fn.fn_name == "complete_job"
    balances = [arena.market.balance_of(x.address) for x in (consumer, a_provider, b_provider)]
    replay = arena.raw(arena.account()).send("complete_job", *args.values())
    assert not replay.ok
    assert "job is not claimed" in replay.reason
    assert [arena.market.balance_of(x.address) for x in (consumer, a_provider, b_provider)] == balances
    assert arena.market.ether_balance() == arena.market.liabilities()


def _copy_of_publish(arena: Arena, victim: LocalAccount, dataset_seed: int):  # type: ignore[no-untyped-def]
    """The arguments of the victim's publish transaction, as anyone watching the mempool sees them."""
    sealed = seal_dataset(tabular(120, dataset_seed), arena.store, name="victim")
    terms, budget, delta = ListingTerms(10**15, 10**15, 5.0, 2.0, 1e-5).to_chain()
    binding = seal.data_key_binding(
        arena.chain.chain_id, arena.market.address, sealed.ciphertext.sha256, provider=victim.address
    )
    sealed_key = seal.seal(
        sealed.data_key, choose_enclave(arena.market, trust=arena.trust).hpke_public_key, binding
    )
    return sealed, (
        sealed.manifest.uri,
        sealed.ciphertext.sha256,
        sealed_key,
        bytes(32),
        terms.as_tuple(),
        budget,
        delta,
    )


def test_a_listing_front_run_with_a_providers_sealed_key_is_failed_and_pays_the_thief_nothing(
    arena: Arena,
) -> None:
    victim, thief, consumer = arena.account(), arena.account(), arena.account()
    _, args = _copy_of_publish(arena, victim, 3)
    # The thief copies the victim's pending publish and gets it mined first.
    stolen = arena.raw(thief).send("publish", *args)
    assert stolen.ok, stolen.reason
    lid = arena.market.listing_count()
    assert arena.market.listing(lid).provider == thief.address
    assert "data already listed" in arena.raw(victim).send("publish", *args).reason
    job_id = submit_job(
        arena.market, consumer, arena.consumer_key, arena.job([lid]), arena.store, trust=arena.trust
    ).job_id
    (handled,) = arena.worker.poll()
    assert handled.state == "failed"
    assert f"listing {lid}: its sealed data key does not open here" in arena.failed_reason(job_id)
    _refunded_and_uncharged(arena, job_id)
    assert arena.market.balance_of(thief.address) == 0
    assert arena.market.listing(lid).budget.spent == 0


def test_a_sealed_key_copied_into_another_providers_listing_does_not_open(arena: Arena) -> None:
    victim, thief, consumer = arena.account(), arena.account(), arena.account()
    honest = arena.list_data(tabular(120, 4), victim)
    # The thief lists its own ciphertext (a copy of nothing it could open) with the victim's sealed key.
    own = seal_dataset(tabular(120, 5), arena.store, name="thief")
    terms, budget, delta = ListingTerms(0, 0, 5.0, 2.0, 1e-5).to_chain()
    sent = arena.raw(thief).send(
        "publish", own.manifest.uri, own.ciphertext.sha256, arena.market.listing(honest).sealed_key,
        bytes(32), terms.as_tuple(), budget, delta,
    )  # fmt: skip
    assert sent.ok, sent.reason
    lid = arena.market.listing_count()
    job_id = submit_job(
        arena.market, consumer, arena.consumer_key, arena.job([lid]), arena.store, trust=arena.trust
    ).job_id
    arena.worker.poll()
    assert f"listing {lid}: its sealed data key does not open here" in arena.failed_reason(job_id)
    _refunded_and_uncharged(arena, job_id)


def test_a_sealed_key_or_job_body_moved_to_another_marketplace_does_not_open_there(
    arena: Arena, tmp_path: Path
) -> None:
    provider, consumer = arena.account(), arena.account()
    lid = arena.list_data(tabular(120, 6), provider)
    original = arena.market.listing(lid)
    # A second Marketplace on the same chain, served by a worker of the same enclave: the same
    # key manager and so the same HPKE key, the strongest case for a moved key or body.
    deployment, reused = ensure_deployment(
        arena.chain, tmp_path, deployer=arena.admin, attestation_signer=arena.market.attestation_signer()
    )
    assert not reused
    second = Marketplace.at(arena.chain, deployment.marketplace)
    worker = Worker.open(
        second, SimulatedTee(arena.state), arena.state / "enclave", arena.store,
        options=WorkerOptions(name="w2", progress_seconds=30.0),
    )  # fmt: skip
    worker.register(admin=arena.admin)
    assert worker.keys.public_key == arena.worker.keys.public_key
    # The provider's own listing, copied verbatim to the second Marketplace (same provider, too).
    sent = arena.raw(provider, second).send(
        "publish", original.data_uri, original.data_hash, original.sealed_key, bytes(32),
        original.terms.as_tuple(), original.budget.total, original.budget.delta,
    )  # fmt: skip
    assert sent.ok, sent.reason
    moved = second.listing_count()
    key_job = arena.hand_made(consumer, arena.job([moved]), market=second)
    body_job = arena.hand_made(consumer, arena.job([moved]), market=second, seal_for=arena.market)
    handled = {h.job_id: h for h in worker.poll()}
    assert handled[key_job].state == handled[body_job].state == "failed"
    assert "its sealed data key does not open here" in arena.failed_reason(key_job, second)
    assert "the job body does not open here" in arena.failed_reason(body_job, second)
    assert second.balance_of(consumer.address) == 2 * (ETH // 10)  # both refunded in full
    assert second.budget(original.data_hash).spent == 0


def test_no_data_key_for_a_job_another_worker_holds_or_that_is_over(arena: Arena) -> None:
    provider, consumer = arena.account(), arena.account()
    lid = arena.list_data(tabular(120, 7), provider)
    listing = arena.market.listing(lid)
    other = Worker.open(
        arena.market, SimulatedTee(arena.state), arena.state / "enclave", arena.store,
        options=WorkerOptions(name="w3", progress_seconds=30.0),
    )  # fmt: skip
    other.register()
    job_id = submit_job(
        arena.market, consumer, arena.consumer_key, arena.job([lid]), arena.store, trust=arena.trust
    ).job_id
    arena.market.claim_job(other.account, job_id)
    other.keys.approve(arena.market, job_id)
    arena.worker.keys.approve(arena.market, job_id)  # even a wrongly approved job of another worker
    with pytest.raises(EnclaveError, match=f"not claimed by this worker \\({arena.worker.address}\\)"):
        arena.worker.keys.data_key(arena.market, job_id, listing, worker=arena.worker.address)
    assert len(other.keys.data_key(arena.market, job_id, listing, worker=other.address)) == 32
    handled = other.process(job_id)
    assert handled.state == "completed", handled.reason
    for keys, worker in ((other.keys, other.address), (arena.worker.keys, arena.worker.address)):
        with pytest.raises(EnclaveError, match="no data key is released"):
            keys.data_key(arena.market, job_id, listing, worker=worker)
    arena.worker.keys.forget(arena.market, job_id)
