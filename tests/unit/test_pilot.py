"""Appraising on a pilot (`release.pilot_fraction`): the run it starts, what it costs, what follows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sterling.crypto.entropy import SecretRandom
from sterling.data.dataset import Dataset, Schema
from sterling.enclave.training import Training
from sterling.errors import UsageError
from sterling.privacy import accountant
from sterling.privacy.dpsgd import DPSGD
from sterling.privacy.graph import template
from sterling.privacy.job import Job
from sterling.privacy.plan import TrainingPlan
from sterling.privacy.verifier import ListingView, verify

FEATURES = 5
ROWS = 400
DELTA = 1e-5


def _data(rows: int, seed: int, *, flipped: bool = False) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 1.5, -1.0]) + 0.3 * rng.normal(size=rows) > 0).astype(np.int64)
    if flipped:
        y = 1 - y  # a seller whose labels say the opposite of the images
    return Dataset(x, y, Schema("tabular", (FEATURES,), "float32", ("no", "yes"), rows))


def _job(ids: list[int], *, pilot: float | None, epsilon: float = 4.0) -> Job:
    release: dict[str, object] = {}
    if pilot is not None:
        release = {
            "appraisal_values": True,
            "appraisal_epsilon": 1.0,
            "retrain_without_dropped": True,
            "drop_flagged": True,
            "pilot_fraction": pilot,
        }
    return Job.parse(
        {
            "listings": [{"listing_id": lid, "epsilon": epsilon} for lid in ids],
            "model": template("logistic_regression", classes=2).model_dump(mode="json"),
            "training": {
                "epochs": 6,
                "expected_batch_size": 40,
                "target_epsilon": 1.0,
                "learning_rate": 2.0,
                "optimizer": "momentum",
                "delta": DELTA,
                "seed": 3,
            },
            "evaluation": {
                "holdout_fraction": 0.0,
                "validation_uri": "file:///mine",
                "metrics": ["accuracy"],
                "checkpoint": "best_accuracy",
            },
            "release": release,
            "payment_cap_wei": 10**18,
        }
    )


def _views(ids: list[int]) -> dict[int, ListingView]:
    schema = Schema("tabular", (FEATURES,), "float32", ("no", "yes"), ROWS)
    return {lid: ListingView(lid, schema, 8.0, 20.0, DELTA, 0, 0) for lid in ids}


def _plan(job: Job, ids: list[int]) -> TrainingPlan:
    report = verify(job, _views(ids))
    assert report.plan is not None, report.violations
    return report.plan


def _train(job: Job, ids: list[int], datasets: list[Dataset], **kw: object) -> Training:
    return Training(
        job, _plan(job, ids), datasets, listing_ids=ids, validation=_data(200, seed=9),
        rng=SecretRandom.for_tests(5), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_run_stopped_and_continued_is_the_same_run():
    x = torch.from_numpy(_data(300, seed=1).features)
    y = torch.from_numpy(_data(300, seed=1).labels)

    def engine() -> DPSGD:
        return DPSGD(
            template("logistic_regression", classes=2), (FEATURES,), clipping_norm=1.0,
            noise_multiplier=1.1, sample_rate=0.1, steps=40, learning_rate=0.5, optimizer="momentum", seed=7,
            rng=SecretRandom.for_tests(7),
        )  # fmt: skip

    whole = engine()
    assert whole.fit(x, y).steps == 40
    parts = engine()
    first = parts.fit(x, y, until=12)
    assert (first.steps, parts.taken) == (12, 12)
    rest = parts.fit(x, y)
    assert rest.steps == 40
    assert [log.step for log in rest.log] == list(range(13, 41))
    for a, b in zip(whole.model.parameters(), parts.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # The budget filter bounds the whole run, not each call.
    limited = engine()
    allowed = limited.fit(x, y, until=5, epsilon_limit=_pld_of(limited, 20)).steps
    assert allowed == 5
    assert limited.fit(x, y, epsilon_limit=_pld_of(limited, 20)).steps == 20


def _pld_of(engine: DPSGD, steps: int) -> float:
    return accountant.pld_epsilon(accountant.DpSgdParams(engine.sigma, engine.q, steps, DELTA)) + 1e-9


def test_the_verifier_reserves_the_pilot_and_one_whole_run():
    ids = [1, 2]
    whole, pilot = _plan(_job(ids, pilot=1.0), ids), _plan(_job(ids, pilot=0.3), ids)
    steps = pilot.steps
    assert pilot.pilot_steps == math.ceil(0.3 * steps)
    assert whole.pilot_steps == steps
    assert [m.name for m in pilot.worst_case()] == [
        "pilot",
        "appraisal.values",
        "appraisal.screening",
        "training",
    ]
    # Everything composed in one PLD: never more than the sum of its parts, and more than the run alone.
    run, first = pilot.epsilon((pilot.run,)), pilot.epsilon((pilot.pilot,))
    total = pilot.epsilon(pilot.worst_case())
    assert run < total < run + first + 1.0
    assert first < run
    assert whole.epsilon(whole.worst_case()) > total
    # A job that reserves only the pilot's total passes; the same reservation for two whole runs fails.
    tight = math.ceil(total * 1e4) / 1e4
    assert verify(_job(ids, pilot=0.3, epsilon=tight), _views(ids)).ok
    refused = verify(_job(ids, pilot=1.0, epsilon=tight), _views(ids))
    assert {v.term for v in refused.violations} == {"epsilon"}


def test_a_pilot_without_retraining_is_refused_by_name():
    body = _job([1], pilot=0.5).model_dump(mode="json")
    body["release"]["retrain_without_dropped"] = False
    body["release"]["drop_flagged"] = False
    with pytest.raises(UsageError, match="pilot_fraction"):
        Job.parse(body)
    body["release"]["pilot_fraction"] = 0.0
    with pytest.raises(UsageError, match="pilot_fraction"):
        Job.parse(body)


def test_a_pilot_that_drops_no_one_goes_on_to_be_the_one_run_released():
    ids = [1, 2]
    job = _job(ids, pilot=0.3)
    plan = _plan(job, ids)
    shown: list[int] = []
    datasets = [_data(ROWS, seed=1), _data(ROWS, seed=2)]
    out = _train(job, ids, datasets, progress=shown.append).run()
    steps = plan.steps
    assert out.info["appraisal"]["flagged"] == []
    assert (out.steps, out.info["steps_run"], out.info["training_runs"]) == (steps, steps, 1)
    # One run's ε, not the pilot's on top: continuing is composing the same steps.
    assert out.ran == [[plan.run, *plan.appraisal]] * 2
    assert out.epsilon_per_listing == [pytest.approx(plan.epsilon(plan.one_run()))] * 2
    # Progress is public: step after step, the schedule does not shrink to show that no one was dropped.
    assert shown == list(range(1, steps + 1))
    # The released model is the model a single run of the same job, with the same secret stream, trains.
    single = _job(ids, pilot=None)
    alone = _train(single, ids, datasets).run()
    assert alone.steps == steps
    assert out.info["checkpoint"] == alone.info["checkpoint"]


def test_a_pilot_that_flags_a_seller_retrains_without_them_and_charges_them_only_the_pilot():
    ids = [1, 2, 3]
    # Half the run: under replace-one accounting (σ 3.3 here) a 30% pilot's model is too weak to
    # flag 400 flipped rows reliably (flagged in 1 of 3 secret streams, at 50% in 3 of 3).
    job = _job(ids, pilot=0.5)
    plan = _plan(job, ids)
    datasets = [_data(ROWS, seed=1), _data(ROWS, seed=2), _data(ROWS, seed=3, flipped=True)]
    shown: list[int] = []
    out = _train(job, ids, datasets, progress=shown.append).run()
    steps, pilot = plan.steps, plan.pilot_steps
    assert pilot is not None
    assert out.info["appraisal"]["flagged"] == [3]
    assert out.kept == [True, True, False]
    assert (out.info["training_runs"], out.info["steps_run"], out.steps) == (2, pilot + steps, steps)
    assert out.ran[2] == [plan.pilot, *plan.appraisal]
    assert out.ran[0] == out.ran[1] == [plan.pilot, *plan.appraisal, plan.run]
    assert out.epsilon_per_listing[2] == pytest.approx(plan.epsilon(plan.retrained(kept=False)))
    assert out.epsilon_per_listing[:2] == [pytest.approx(plan.epsilon(plan.worst_case()))] * 2
    assert shown == list(range(1, pilot + steps + 1))
    assert out.metrics["accuracy"] > 0.85


def test_a_contract_that_keeps_no_one_ends_without_a_model_and_is_charged_the_pilot():
    ids = [1, 2]
    job = _job(ids, pilot=0.3)
    plan = _plan(job, ids)
    datasets = [_data(ROWS, seed=1), _data(ROWS, seed=2)]
    out = _train(job, ids, datasets, keep=lambda values: []).run()
    assert not out.has_model
    assert out.bundle.state == {}
    assert out.info["model_released"] is False
    assert out.kept == [False, False]
    # What ran is charged: the pilot and its appraisal, on both listings.
    assert out.ran == [[plan.pilot, *plan.appraisal]] * 2
    assert out.epsilon_per_listing[0] == pytest.approx(plan.epsilon(plan.retrained(kept=False)))
    assert out.epsilon_per_listing[0] > 0
