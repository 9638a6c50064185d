"""A job from submission to a settled payment and a model only the consumer can open (one process).

The multi-process version, with anvil and separate chain, worker, provider
and consumer processes, is in test_enclave_processes.py.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from enclave_world import World, make_world, tabular

from sterling.chain.types import JobState
from sterling.chain.units import to_delta
from sterling.crypto import seal
from sterling.enclave.keymanager import KeyManager
from sterling.enclave.serving import Server
from sterling.enclave.tee import SimulatedTee
from sterling.errors import ContractRevert, EnclaveError, IntegrityError, UsageError
from sterling.sdk.consumer import JobRejected, fetch_result, progress, submit_job, upload_validation_set
from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset


@pytest.fixture
def world(tmp_path) -> World:
    w = make_world(tmp_path)
    yield w
    w.chain.close()


def _submit(world: World, job, **kw):
    return submit_job(
        world.market, world.consumer, world.consumer_key, job, world.store, trust=world.trust, **kw
    )


def test_a_job_runs_end_to_end_and_only_the_consumer_opens_the_model(world):
    a = world.list_data(tabular(400, 1), provider=0)
    b = world.list_data(tabular(300, 2), provider=1, price_per_job=2 * 10**15)
    submitted = _submit(world, world.job([a, b]))
    assert world.market.job(submitted.job_id).state is JobState.PENDING

    (handled,) = world.worker.poll()
    assert handled.state == "completed", handled.reason

    job = world.market.job(submitted.job_id)
    assert job.state is JobState.COMPLETED
    assert job.enclave == world.worker.address
    # Providers are paid their quoted price; the ε charged is what training and metrics spent.
    assert [x.payout for x in job.allocations] == [x.price for x in job.allocations]
    assert world.market.balance_of(world.providers[1].address) == job.allocations[1].price
    for x in job.allocations:
        assert 0 < x.spent <= x.reserved
    assert world.market.listing(a).budget.spent == job.allocations[0].spent
    assert world.market.listing(a).budget.reserved == 0
    assert world.market.ether_balance() == world.market.liabilities()

    # Public heartbeats were on chain: steps and ε, never a loss.
    beats = [e for e in world.market.job_events(submitted.job_id) if e.name == "JobProgress"]
    assert beats[0].args["step"] == 0
    assert beats[-1].args["step"] == beats[-1].args["steps"] == 20
    assert set(beats[-1].args) == {"job_id", "enclave", "step", "steps", "micro_epsilon", "lease_deadline"}
    assert progress(world.market, submitted.job_id).state == "completed"

    bundle = fetch_result(world.market, submitted.job_id, world.consumer_key)
    test = tabular(500, 99)
    accuracy = float((bundle.predict_proba(test.features).argmax(axis=1) == test.labels).mean())
    assert accuracy > 0.85
    assert bundle.info["epsilon_spent"] <= 1.0
    assert set(bundle.info["metrics"]) == {"accuracy"}
    assert bundle.info["metrics_private"] is True

    # Anyone else's key, or a copy of the sealed model key moved to another job, opens nothing.
    with pytest.raises(Exception, match="another consumer key"):
        fetch_result(world.market, submitted.job_id, X25519PrivateKey.generate())
    moved = seal.model_key_binding(
        world.chain.chain_id, world.market.address, job_id=99, result_hash=job.result_hash
    )
    with pytest.raises(IntegrityError):
        seal.unseal(job.sealed_model_key, world.consumer_key, moved)


def test_the_client_refuses_a_job_the_verifier_rejects_and_spends_nothing(world):
    a = world.list_data(tabular(200, 1), cap=1.0)
    bad = world.job([a], listings=[{"listing_id": a, "epsilon": 1.5}])
    before = world.market.job_count()
    with pytest.raises(JobRejected, match="per-job cap"):
        _submit(world, bad)
    assert world.market.job_count() == before


def _hand_made(world: World, job, *, epsilons: list[int] | None = None, consumer=None) -> int:
    """A submission that bypasses the client's verifier."""
    consumer = consumer or world.consumer
    pub = seal.public_bytes(world.consumer_key)
    binding = seal.job_body_binding(
        world.chain.chain_id, world.market.address, consumer=consumer.address, consumer_key=pub
    )
    ref = world.store.put_bytes(seal.seal(job.canonical(), world.worker.keys.public_key, binding))
    ids = [x.listing_id for x in job.listings]
    micro = epsilons or [round(x.epsilon * 10**6) for x in job.listings]
    return world.market.submit_job(
        consumer,
        listing_ids=ids,
        epsilons=micro,
        delta=to_delta(job.training.delta),
        consumer_key=pub,
        job_hash=ref.sha256,
        job_uri=ref.uri,
        value=10**17,
    )


def _failed_reason(world: World, job_id: int) -> str:
    (ev,) = [e for e in world.market.job_events(job_id) if e.name == "JobFailed"]
    return str(ev.args["reason"])


def test_a_hand_made_job_that_fails_verification_in_the_enclave_is_failed_and_refunded(world):
    a = world.list_data(tabular(200, 1))
    # Trains to ε 1.8 but reserves 1.0, with batch norm: the client would never send this.
    layers = [{"type": "batchnorm"}, {"type": "linear", "out": 2}]
    job = world.job([a], model={"layers": layers}, training={"target_epsilon": 1.8})
    job_id = _hand_made(world, job)
    (handled,) = world.worker.poll()
    assert handled.state == "failed"
    reason = _failed_reason(world, job_id)
    assert reason.startswith("verification failed")
    assert "batch norm" in reason
    assert world.market.job(job_id).state is JobState.FAILED
    assert world.market.balance_of(world.consumer.address) == 10**17  # full refund
    assert world.market.listing(a).budget.spent == world.market.listing(a).budget.reserved == 0


def test_a_job_body_that_asks_other_than_the_chain_reserved_is_failed(world):
    a = world.list_data(tabular(200, 1))
    job_id = _hand_made(world, world.job([a]), epsilons=[500_000])
    world.worker.poll()
    assert "the chain reserved" in _failed_reason(world, job_id)


def test_a_job_body_sealed_for_another_consumer_does_not_open(world):
    a = world.list_data(tabular(200, 1))
    job = world.job([a])
    pub = seal.public_bytes(world.consumer_key)
    # Sealed for consumer A, submitted (replayed) by consumer B.
    binding = seal.job_body_binding(
        world.chain.chain_id, world.market.address, consumer=world.consumer.address, consumer_key=pub
    )
    ref = world.store.put_bytes(seal.seal(job.canonical(), world.worker.keys.public_key, binding))
    thief = world.chain.dev_accounts[7]
    job_id = world.market.submit_job(
        thief, listing_ids=[a], epsilons=[10**6], delta=to_delta(1e-5), consumer_key=pub,
        job_hash=ref.sha256, job_uri=ref.uri, value=10**17,
    )  # fmt: skip
    world.worker.poll()
    assert "does not open here" in _failed_reason(world, job_id)


def test_missing_or_corrupt_data_fails_the_job_cleanly(world):
    a = world.list_data(tabular(200, 1))
    listing = world.market.listing(a)
    world.store.delete(listing.data_hash)
    job_id = _submit(world, world.job([a])).job_id
    (handled,) = world.worker.poll()
    assert handled.state == "failed"
    assert "missing or corrupt" in _failed_reason(world, job_id)
    assert world.market.balance_of(world.consumer.address) == world.market.job(job_id).escrow


def test_a_provider_contract_refusal_fails_the_job_with_its_reason(world, tmp_path):
    contract = (
        "def check(request):\n"
        "    if 'advertis' in request['purpose'].lower():\n"
        "        return {'accept': False, 'reason': 'no advertising'}\n"
        "    return True\n"
    )
    a = world.list_data(tabular(200, 1), contract=contract)
    with pytest.raises(UsageError, match="listing 1: its contract refused: no advertising"):
        _submit(world, world.job([a], purpose="advertising targeting"))  # the client runs it first
    ads = _hand_made(world, world.job([a], purpose="advertising targeting"))
    research = _submit(world, world.job([a], purpose="retinopathy research")).job_id
    handled = {h.job_id: h for h in world.worker.poll()}
    assert handled[ads].state == "failed"
    assert "contract refused: no advertising" in _failed_reason(world, ads)
    assert handled[research].state == "completed"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("def check(request):\n    while True:\n        pass\n", "fuel"),
        (
            "def check(request):\n    x = []\n    while True:\n        x.append(bytearray(1 << 20))\n",
            "memory",
        ),
        ("import os\ndef check(request):\n    return True\n", "forbidden"),
        ("def check(request):\n    return open('/etc/passwd').read()\n", "forbidden"),
        ("def check(request):\n    raise ValueError('nope')\n", "raised"),
        ("def check(request):\n    return {'accept': 'maybe'}\n", "garbage"),
    ],
)
def test_a_malicious_provider_contract_fails_the_job_and_the_worker_goes_on(world, body, kind):
    bad = world.list_data(tabular(200, 1), provider=0, contract=body)
    good = world.list_data(tabular(200, 2), provider=1)
    with pytest.raises(UsageError, match=f"contract {kind}"):
        _submit(world, world.job([bad]))  # the client's sandbox stops it first
    bad_job = _hand_made(world, world.job([bad]))
    good_job = _submit(world, world.job([good])).job_id
    handled = {h.job_id: h for h in world.worker.poll()}
    assert handled[bad_job].state == "failed"
    assert f"contract {kind}" in _failed_reason(world, bad_job)
    assert world.market.balance_of(world.consumer.address) == world.market.job(bad_job).escrow
    assert handled[good_job].state == "completed"


def test_no_data_key_is_released_for_a_job_not_claimed_by_this_worker(world, tmp_path):
    a = world.list_data(tabular(200, 1))
    job_id = _submit(world, world.job([a])).job_id
    listing = world.market.listing(a)
    keys = world.worker.keys
    me = world.worker.address
    with pytest.raises(EnclaveError, match="has not passed verification"):
        keys.data_key(world.market, job_id, listing, worker=me)
    keys.approve(world.market, job_id)  # even if approved, the chain must show it claimed by this worker
    with pytest.raises(EnclaveError, match="pending, not claimed by this worker"):
        keys.data_key(world.market, job_id, listing, worker=me)
    world.market.claim_job(world.worker.account, job_id)
    other = world.chain.dev_accounts[8].address
    with pytest.raises(EnclaveError, match="not claimed by this worker"):
        keys.data_key(world.market, job_id, listing, worker=other)
    assert len(keys.data_key(world.market, job_id, listing, worker=me)) == 32
    b = world.list_data(tabular(100, 3), provider=1)
    with pytest.raises(EnclaveError, match="does not use listing"):
        keys.data_key(world.market, job_id, world.market.listing(b), worker=me)


def test_the_key_manager_is_shared_by_workers_of_one_enclave_and_sealed_to_it(world, tmp_path):
    again = KeyManager(SimulatedTee(world.state), world.state / "enclave")
    assert again.public_key == world.worker.keys.public_key
    other_code = SimulatedTee(world.state, measurement=os.urandom(32))
    with pytest.raises(EnclaveError):
        KeyManager(other_code, world.state / "enclave")


DROP_HARMFUL = "def keep(values):\n    return [int(k) for k, v in values.items() if v >= 0]\n"


def test_appraisal_flags_and_drops_a_noise_seller_who_is_then_paid_only_the_appraisal_fee(world):
    honest = [world.list_data(tabular(500, seed), provider=i) for i, seed in enumerate((1, 2, 3))]
    noise = tabular(500, 4, noise=True)
    fee = 10**14
    sealed = seal_dataset(noise, world.store, name="noise", appraisal_fee_wei=fee)
    seller = publish(
        world.market, world.providers[3], sealed, ListingTerms(10**15, 10**15, 5.0, 2.0, 1e-5),
        enclave=choose_enclave(world.market, trust=world.trust),
    ).listing_id  # fmt: skip
    ids = [*honest, seller]
    job = world.job(
        ids,
        listings=[{"listing_id": lid, "epsilon": 2.0} for lid in ids],
        training={"target_epsilon": 0.6},
        evaluation={
            "holdout_fraction": 0.0,
            "validation_uri": upload_validation_set(world.store, tabular(400, 50)),
            "metrics": ["accuracy", "auc"],
            "metrics_epsilon": 0.0,
        },
        # The label screen flags the seller and `drop_flagged` drops it; the consumer's contract also
        # drops any provider whose released value is negative (an honest one's is far above zero).
        release={
            "appraisal_values": True,
            "appraisal_epsilon": 1.0,
            "retrain_without_dropped": True,
            "drop_flagged": True,
        },
        contract=DROP_HARMFUL,
        bonus_pool_wei=3 * 10**15,
    )
    submitted = _submit(world, job)
    assert (
        submitted.escrow_wei
        == sum(world.market.quote(world.consumer.address, lid, 2 * 10**6) for lid in ids) + 3 * 10**15
    )
    (handled,) = world.worker.poll()
    assert handled.state == "completed", handled.reason
    chain_job = world.market.job(submitted.job_id)
    bundle = fetch_result(world.market, submitted.job_id, world.consumer_key)
    appraisal = bundle.info["appraisal"]
    assert appraisal["flagged"] == [seller]
    assert appraisal["kept"] == honest
    # Released with noise of scale 2c/ε: the seller's value sits below every honest provider's.
    assert appraisal["values"][str(seller)] < min(appraisal["values"][str(h)] for h in honest)
    assert bundle.info["metrics"]["accuracy"] > 0.85
    assert bundle.info["metrics"]["auc"] > 0.9
    by_listing = {a.listing_id: a for a in chain_job.allocations}
    assert by_listing[seller].payout == fee  # dropped: only the appraisal fee
    bonus = sum(by_listing[h].payout - by_listing[h].price for h in honest)
    assert 0 < bonus <= 3 * 10**15
    for h in honest:
        assert by_listing[h].payout > by_listing[h].price
        # Kept data trained twice (before and after dropping): it is charged more than the dropped data.
        assert by_listing[h].spent > by_listing[seller].spent > 0
    assert sum(a.payout for a in chain_job.allocations) <= chain_job.escrow
    assert world.market.ether_balance() == world.market.liabilities()


def test_served_predictions_are_attributed_and_their_fee_split_on_chain(world):
    ids = [world.list_data(tabular(400, s), provider=i) for i, s in enumerate((1, 2))]
    job = world.job(
        ids,
        evaluation={
            "holdout_fraction": 0.0,
            "validation_uri": upload_validation_set(world.store, tabular(300, 60)),
            "metrics": ["accuracy"],
            "metrics_epsilon": 0.0,
        },
        release={"attribution_epsilon": 0.2},
    )
    job_id = _submit(world, job).job_id
    (handled,) = world.worker.poll()
    assert handled.state == "completed", handled.reason
    payer = world.chain.dev_accounts[9]
    before = [world.market.balance_of(world.providers[i].address) for i in range(2)]
    server = Server(world.market, world.worker.tee, world.state / "enclave", world.worker.account)
    test = tabular(50, 70)
    served = server.predict(job_id, test.features, payer=payer.address)
    assert served.attribution is not None
    assert served.attribution.shape == (50, 2)
    assert abs(served.attribution.sum(axis=1) - 1).max() < 1e-9
    accuracy = (served.probabilities.argmax(1) == test.labels).mean()
    assert accuracy > 0.8
    server.pay(served, payer, fee_wei=10**6)
    gained = [world.market.balance_of(world.providers[i].address) - before[i] for i in range(2)]
    assert sum(gained) == 10**6
    total = sum(served.weights)
    for g, w in zip(gained, served.weights, strict=True):
        assert g >= 10**6 * w // total
    with pytest.raises(ContractRevert, match="batch already paid"):
        server.pay(served, payer, fee_wei=10**6)
