"""The consumer as the adversary of privacy: it writes the job, receives the model and reads the chain.

Each test is an attack a consumer could mount on the promise that it learns
no more about one row than the ε charged to that row's budget allows, run
against the real worker on the embedded EVM (or the real engine where the
attack needs no chain). docs/threat-model.md lists them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from enclave_world import World, make_world, tabular

from sterling.chain.types import JobState, Terms
from sterling.chain.units import charge_micro, to_delta
from sterling.crypto import seal
from sterling.crypto.entropy import SecretRandom
from sterling.enclave.tee import SimulatedTee
from sterling.enclave.worker import FAILED_AFTER_TRAINING, Worker, WorkerOptions
from sterling.privacy import oblivious
from sterling.privacy.accountant import calibrate_noise
from sterling.privacy.dpsgd import DPSGD
from sterling.privacy.graph import template
from sterling.privacy.receipt import Receipt
from sterling.sdk.consumer import JobRejected, fetch_result, submit_job, upload_validation_set
from sterling.sdk.receipts import check_receipt
from sterling.storage.blobs import fetch_verified


@pytest.fixture
def world(tmp_path: Path) -> Any:
    w = make_world(tmp_path)
    yield w
    w.chain.close()


def _list(world: World, seed: int, provider: int, *, rows: int = 400) -> int:
    return world.list_data(tabular(rows, seed), provider=provider, budget=20.0, cap=8.0)


def _submit(world: World, job: Any) -> int:
    return submit_job(
        world.market, world.consumer, world.consumer_key, job, world.store, trust=world.trust
    ).job_id


def _pilot_job(
    world: World, ids: list[int], *, contract: str | None = None, epsilon: float = 4.0, appraisal: float = 0.5
) -> Any:
    return world.job(
        ids,
        listings=[{"listing_id": lid, "epsilon": epsilon} for lid in ids],
        evaluation={
            "holdout_fraction": 0.0,
            "validation_uri": upload_validation_set(world.store, tabular(300, 50)),
            "metrics": ["accuracy"],
            "metrics_epsilon": 0.0,
        },
        release={
            "appraisal_values": True,
            "appraisal_epsilon": appraisal,
            "retrain_without_dropped": True,
            "pilot_fraction": 0.5,
        },
        contract=contract,
    )


# ------------------------------------------------------------------ replaying the run


def _canary_game(engine_rng: Any, seed: int, *, replay: bool) -> tuple[int, int]:
    """One white-box game: (guesses, correct) of a consumer guessing canaries' labels from the model.

    The consumer knows the job (its seed too) and every row but the canaries' labels: each of M
    canaries, in a feature coordinate no other row uses, is labelled 0 or 1 at random, so its
    two possible worlds are neighbours under replace-one. With `replay` it re-runs the job with
    everything it knows (the seed, the engine's code, its guess at the engine's randomness, all
    labels 0) and subtracts that run from the released model, cancelling whatever noise it can
    reproduce; then it scores each canary by how far its coordinate moved towards label 1.
    """
    m, d, n, q, steps = 1000, 5, 200, 0.5, 20
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, d))
    real_y = (real[:, 0] > 0).astype(int)
    labels = rng.integers(0, 2, m)
    x = np.zeros((n + m, d + m), dtype=np.float32)
    x[:n, :d] = real
    x[n + np.arange(m), d + np.arange(m)] = 100.0
    sigma = calibrate_noise(target_epsilon=CLAIMED, sample_rate=q, steps=steps, delta=DELTA)

    def run(y_canary: np.ndarray, stream: SecretRandom) -> np.ndarray:
        engine = DPSGD(
            template("logistic_regression", classes=2), (d + m,), clipping_norm=1.0, noise_multiplier=sigma,
            sample_rate=q, steps=steps, learning_rate=0.1, seed=seed, rng=stream,
        )  # fmt: skip
        engine.fit(torch.from_numpy(x), torch.from_numpy(np.concatenate([real_y, y_canary])))
        return engine.model[-1].weight.detach().numpy().copy()

    released = run(labels, engine_rng(seed))
    baseline = run(np.zeros(m, dtype=int), SecretRandom.for_tests(seed)) if replay else 0.0
    moved = released - baseline
    cols = d + np.arange(m)
    score = moved[1, cols] - moved[0, cols]
    order = np.argsort(score)
    correct = int((labels[order[-K:]] == 1).sum() + (labels[order[:K]] == 0).sum())
    return 2 * K, correct


CLAIMED, DELTA, K = 2.0, 1e-5, 100


def _lower_bound(guesses: int, correct: int) -> float:
    """The largest ε under which `correct` of `guesses` is less likely than 5% (Steinke et al. 2023)."""
    lo, hi = 0.0, 30.0
    if stats.binom.sf(correct - 1, guesses, 0.5) > 0.05:
        return 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        p = math.exp(mid) / (1 + math.exp(mid))
        lo, hi = (mid, hi) if stats.binom.sf(correct - 1, guesses, p) <= 0.05 else (lo, mid)
    return lo


@pytest.mark.parametrize("seed", [0, 1])
def test_a_white_box_replay_learns_no_more_about_a_row_than_the_epsilon_charged(seed):
    # The enclave's randomness is secret: replaying the job with its seed cancels nothing.
    lower = _lower_bound(*_canary_game(lambda _: SecretRandom.from_os(), seed, replay=True))
    assert lower < CLAIMED, lower
    # The audit has the power to see a replayable run: an engine whose randomness followed the
    # job's seed (as Sterling's did) gives every canary away to the same consumer.
    guesses, correct = _canary_game(SecretRandom.for_tests, seed, replay=True)
    assert correct == guesses
    assert _lower_bound(guesses, correct) > 2 * CLAIMED


def test_two_runs_of_one_job_release_different_models_and_the_seed_fixes_only_the_start():
    x, y = torch.randn(300, 6), torch.randint(0, 2, (300,))

    def engine() -> DPSGD:
        return DPSGD(
            template("logistic_regression", classes=2), (6,), clipping_norm=1.0, noise_multiplier=1.0,
            sample_rate=0.2, steps=10, learning_rate=0.5, seed=3,
        )  # fmt: skip

    a, b = engine(), engine()
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    a.fit(x, y)
    b.fit(x, y)
    gap = sum(
        float((p - q).detach().norm())
        for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True)
    )
    assert gap > 1e-3
    # The job's seed leaves no global generator seeded behind it.
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    engine()
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------- outcomes that depend on the data


def test_a_contract_that_drops_everyone_after_the_pilot_completes_without_a_model_and_is_charged(world):
    ids = [_list(world, s, i) for i, s in enumerate((1, 2))]
    job_id = _submit(world, _pilot_job(world, ids, contract="def keep(values):\n    return []\n"))
    (handled,) = world.worker.poll()
    assert handled.state == "completed", handled.reason
    job = world.market.job(job_id)
    assert job.state is JobState.COMPLETED  # not a free, refunded failure
    bundle = fetch_result(world.market, job_id, world.consumer_key)
    assert not bundle.has_model
    assert bundle.info["model_released"] is False
    for a in job.allocations:
        assert 0 < a.spent <= a.reserved  # the pilot and its appraisal ran on the data: charged
        assert a.payout == 0  # no appraisal fee in these terms; nothing else is owed
    checked = check_receipt(world.market, job_id)
    assert checked.ok, checked.problems
    assert checked.receipt is not None
    assert checked.receipt.outcome == "no_model"
    assert [m.name for m in checked.receipt.charges[0].mechanisms] == [
        "pilot", "appraisal.values", "appraisal.screening",
    ]  # fmt: skip


def test_a_failure_after_training_began_is_charged_what_ran_with_a_fixed_reason(world, monkeypatch):
    from sterling.enclave.training import Training

    ids = [_list(world, 3, 0)]
    job_id = _submit(world, _pilot_job(world, ids))

    def broken(self: Training, model: Any) -> dict[str, float]:
        raise RuntimeError("the label of row 17 is 1")  # a failure whose text would leak data

    monkeypatch.setattr(Training, "_metrics", broken)
    (handled,) = world.worker.poll()
    assert handled.state == "failed"
    job = world.market.job(job_id)
    assert job.state is JobState.FAILED
    (event,) = [e for e in world.market.job_events(job_id) if e.name == "JobFailed"]
    assert event.args["reason"] == FAILED_AFTER_TRAINING
    assert "row 17" not in event.args["reason"]
    (a,) = job.allocations
    assert 0 < a.spent <= a.reserved
    assert world.market.balance_of(world.consumer.address) >= job.escrow  # refunded in full
    checked = check_receipt(world.market, job_id)
    assert checked.ok, checked.problems
    assert checked.receipt is not None
    assert checked.receipt.outcome == "failed"


def _raw_submit(world, body: Any, ids: list[int]) -> int:
    """Seal ``body`` to the enclave and submit it straight to the chain, past every SDK check."""
    enclave = world.market.enclave(world.worker.address)
    public = seal.public_bytes(world.consumer_key)
    binding = seal.job_body_binding(
        world.market.chain.chain_id,
        world.market.address,
        consumer=world.consumer.address,
        consumer_key=public,
    )
    ref = world.store.put_bytes(seal.seal(body.canonical(), enclave.hpke_public_key, binding))
    return world.market.submit_job(
        world.consumer, listing_ids=ids, epsilons=[10**6] * len(ids), delta=to_delta(1e-5),
        consumer_key=public, job_hash=ref.sha256, job_uri=ref.uri, value=10**17,
    )  # fmt: skip


def test_a_refusal_before_the_data_keys_are_released_charges_nothing(world):
    ids = [world.list_data(tabular(400, 3), provider=0)]
    job = world.job(ids)
    # The chain accepts what the SDK would refuse: a body whose δ differs from the one reserved.
    body = job.model_copy(update={"training": job.training.model_copy(update={"delta": 2e-6})})
    job_id = _raw_submit(world, body, ids)
    (handled,) = world.worker.poll()
    assert handled.state == "failed"
    assert [a.spent for a in world.market.job(job_id).allocations] == [0]
    assert check_receipt(world.market, job_id).ok


# ------------------------------------------------------------------------ counting data once


def test_a_listing_and_its_derived_listing_cannot_train_one_job(world):
    parent = world.list_data(tabular(300, 5), provider=0)
    child = world.market.derive(
        world.providers[0], parent, terms=Terms(10**14, 10**14, 2 * 10**6, "0x" + "00" * 20, bytes(32))
    )
    job = world.job([parent, child])
    with pytest.raises(JobRejected, match="same data"):
        _submit(world, job)
    # Past the SDK, straight to the chain: the worker refuses it before any data key is released.
    job_id = _raw_submit(world, job, [parent, child])
    (handled,) = world.worker.poll()
    assert handled.state == "failed"
    assert "same data" in handled.reason
    assert [a.spent for a in world.market.job(job_id).allocations] == [0, 0]
    assert world.market.listing(parent).budget.spent == 0


# ------------------------------------------------------------------------- oblivious overflow


def _overflow_bound(p: oblivious.Plan, n: int, q: float, steps: int) -> float:
    """The union bound, from exact binomial tails, that some block or the batch overflows in some step."""
    per_step = stats.binom.sf(p.capacity, n, q)
    if p.blocks > 1:
        per_step += p.blocks * stats.binom.sf(p.block_capacity, p.block, q)
    return steps * per_step


@pytest.mark.parametrize(
    ("n", "q", "steps"), [(20_000, 5e-4, 2_000), (100_000, 1e-4, 5_000), (2048, 1 / 8, 100)]
)
def test_oblivious_capacities_overflow_with_probability_at_most_the_delta_set_aside(n, q, steps):
    delta = 1e-5
    failure = delta * oblivious.OVERFLOW_SHARE
    p = oblivious.plan(n, q, steps=steps, failure=failure)
    assert _overflow_bound(p, n, q, steps) <= failure

    # The rule before (expected count plus six standard deviations) overflowed far more often at
    # small q·block: 40 to 60 times the job's δ at these sizes.
    def six_sigma(k: int) -> int:
        return min(k, math.ceil(k * q + 6 * math.sqrt(k * q * (1 - q)) + 1))

    old = oblivious.Plan(n, six_sigma(n), p.block, six_sigma(p.block), p.padded)
    if q < 0.01:
        assert _overflow_bound(old, n, q, steps) > 10 * delta


# -------------------------------------------------------------------- the receipt, recomputed


def _independent_epsilon(charge: dict[str, Any], delta: float) -> float:
    """ε of a receipt's charge, recomputed here with dp-accounting alone (no Sterling code)."""
    rel = dpa.NeighboringRelation.REPLACE_ONE
    composed = pld_lib.identity(value_discretization_interval=1e-4)
    for m in charge["mechanisms"]:
        if m["kind"] == "dp_sgd":
            one = pld_lib.from_gaussian_mechanism(
                m["noise_multiplier"], sampling_prob=m["sample_rate"], neighboring_relation=rel,
                value_discretization_interval=1e-4,
            )  # fmt: skip
            part = one.self_compose(m["steps"])
        elif m["kind"] == "discrete_laplace":
            exact = math.floor(m["epsilon"] * 2**20) / 2**20  # the ε a release uses (on a 2^-20 grid)
            part = pld_lib.from_discrete_laplace_mechanism(
                exact / m["sensitivity"], sensitivity=m["sensitivity"], value_discretization_interval=1e-4
            )
        else:
            part = pld_lib.from_gaussian_mechanism(
                m["noise_multiplier"], neighboring_relation=rel, value_discretization_interval=1e-4
            )
        composed = composed.compose(part)
    return float(composed.get_epsilon_for_delta(delta))


def test_the_receipt_recomputed_independently_is_what_the_chain_charged(world):
    honest = [_list(world, 1, 0), _list(world, 2, 1)]
    flipped = tabular(400, 3)
    flipped.labels[:] = 1 - flipped.labels
    seller = world.list_data(flipped, provider=2, budget=20.0, cap=8.0)
    job = _pilot_job(world, [*honest, seller], epsilon=7.0, appraisal=2.0)
    job = job.model_copy(update={"release": job.release.model_copy(update={"drop_flagged": True})})
    job_id = _submit(world, job)
    (handled,) = world.worker.poll()
    assert handled.state == "completed", handled.reason
    chain_job = world.market.job(job_id)
    (event,) = [e for e in world.market.job_events(job_id) if e.name == "JobCompleted"]
    receipt = Receipt.from_bytes(fetch_verified(event.args["receipt_uri"], bytes(event.args["receipt_hash"])))
    import json

    doc = json.loads(receipt.to_bytes())
    delta = doc["delta"] - ((doc["plan"].get("oblivious") or {}).get("delta_overflow") or 0.0)
    for charge, a in zip(doc["charges"], chain_job.allocations, strict=True):
        assert charge["listing_id"] == a.listing_id
        assert abs(charge_micro(_independent_epsilon(charge, delta)) - a.spent) <= 1
    # The flipped seller was dropped after the pilot: it was charged less than the kept providers.
    spent = [a.spent for a in chain_job.allocations]
    assert spent[2] < spent[0] == spent[1]
    assert check_receipt(world.market, job_id).ok


def test_a_receipt_that_does_not_match_the_chain_is_refused(world, tmp_path):
    ids = [world.list_data(tabular(400, 4), provider=0)]
    job_id = _submit(world, world.job(ids))
    world.worker.poll()
    (event,) = [e for e in world.market.job_events(job_id) if e.name == "JobCompleted"]
    path = Path(str(event.args["receipt_uri"]).removeprefix("file://"))
    path.write_bytes(path.read_bytes().replace(b'"outcome":"model"', b'"outcome":"failed"'))
    from sterling.errors import IntegrityError

    with pytest.raises(IntegrityError, match="hash on chain"):
        check_receipt(world.market, job_id)


# ------------------------------------------------------------------ takeover after a pilot


def _second_worker(world: World) -> Worker:
    w = Worker.open(
        world.market, SimulatedTee(world.state), world.state / "enclave", world.store,
        options=WorkerOptions(name="w2", progress_seconds=0.0),
    )  # fmt: skip
    w.register(admin=world.admin)
    return w


@pytest.mark.parametrize("reached_past_pilot", [False, True])
def test_a_takeover_charges_an_earlier_holders_pilot_only_once_its_progress_could_show_the_choice(
    world, reached_past_pilot
):
    ids = [_list(world, s, i) for i, s in enumerate((1, 2))]
    job_id = _submit(world, _pilot_job(world, ids, epsilon=6.0))
    plan = None
    # The first holder claims, reports public progress and dies (its lease runs out).
    world.market.claim_job(world.worker.account, job_id)
    from sterling.privacy.verifier import verify
    from sterling.sdk.consumer import listing_views

    body = _pilot_job(world, ids, epsilon=6.0)
    plan = verify(body, listing_views(world.market, ids)).plan
    assert plan is not None
    assert plan.pilot_steps is not None
    step = plan.pilot_steps + (1 if reached_past_pilot else 0)
    world.market.report_progress(
        world.worker.account, job_id, step=step, steps=plan.schedule_steps, micro_epsilon=1
    )
    world.chain.advance_time(world.market.lease_seconds() + 1)
    (handled,) = _second_worker(world).poll()
    assert handled.state == "completed", handled.reason
    checked = check_receipt(world.market, job_id)
    assert checked.ok, checked.problems
    assert checked.receipt is not None
    names = [m.name for m in checked.receipt.charges[0].mechanisms]
    prior = ["prior.1.pilot", "prior.1.appraisal.values", "prior.1.appraisal.screening"]
    assert (names[:3] == prior) is reached_past_pilot
    assert names.count("pilot") + names.count("training") >= 1  # the takeover's own run, charged once
