"""Appraising on a pilot (`release.pilot_fraction`): the run it starts, what it costs, what follows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sterling.data.dataset import Dataset, Schema
from sterling.enclave import training
from sterling.errors import UsageError
from sterling.privacy import accountant
from sterling.privacy.dpsgd import DPSGD
from sterling.privacy.graph import template
from sterling.privacy.job import Job
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


def _pld(summary: dict[str, object], steps: int) -> float:
    sigma, q = float(summary["noise_multiplier"]), float(summary["sample_rate"])  # type: ignore[arg-type]
    return accountant.pld_epsilon(accountant.DpSgdParams(sigma, q, steps, DELTA))


def test_a_run_stopped_and_continued_is_the_same_run():
    x = torch.from_numpy(_data(300, seed=1).features)
    y = torch.from_numpy(_data(300, seed=1).labels)

    def engine() -> DPSGD:
        return DPSGD(
            template("logistic_regression", classes=2), (FEATURES,), clipping_norm=1.0,
            noise_multiplier=1.1, sample_rate=0.1, steps=40, learning_rate=0.5, optimizer="momentum", seed=7,
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
    whole = verify(_job(ids, pilot=1.0), _views(ids)).summary
    pilot = verify(_job(ids, pilot=0.3), _views(ids)).summary
    steps = pilot["steps"]
    assert pilot["pilot_steps"] == math.ceil(0.3 * steps)
    assert whole["pilot_steps"] == steps
    run = pilot["epsilon_training"]["pld"]
    assert pilot["epsilon_pilot"] == pytest.approx(_pld(pilot, pilot["pilot_steps"]))
    assert pilot["epsilon_total"] == pytest.approx(run + pilot["epsilon_pilot"] + 1.0)
    assert whole["epsilon_total"] == pytest.approx(2 * run + 1.0)
    assert pilot["epsilon_pilot"] < run
    # A job that reserves only the pilot's total passes; the same reservation for two whole runs fails.
    tight = pilot["epsilon_total"] + 0.01
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
    summary = verify(job, _views(ids)).summary
    shown: list[tuple[int, int]] = []
    datasets = [_data(ROWS, seed=1), _data(ROWS, seed=2)]
    out = training.train(
        job, summary, datasets, listing_ids=ids, validation=_data(200, seed=9),
        progress=lambda step, total: shown.append((step, total)),
    )  # fmt: skip
    steps = summary["steps"]
    assert out.info["appraisal"]["flagged"] == []
    assert (out.steps, out.info["steps_run"], out.info["training_runs"]) == (steps, steps, 1)
    # One run's ε, not the pilot's on top: continuing is composing the same steps.
    assert out.epsilon_per_listing == [pytest.approx(_pld(summary, steps) + 1.0)] * 2
    # Progress counted pilot plus a possible second run, then that one run, never going back.
    pilot = summary["pilot_steps"]
    assert shown[0] == (1, pilot + steps)
    assert shown[pilot - 1] == (pilot, pilot + steps)
    assert shown[pilot] == (pilot + 1, steps)
    assert shown[-1] == (steps, steps)
    assert [s for s, _ in shown] == list(range(1, steps + 1))
    # The released model is the model a single run of the same job would have trained.
    single = _job(ids, pilot=None)
    alone = training.train(
        single, verify(single, _views(ids)).summary, datasets, listing_ids=ids, validation=_data(200, seed=9)
    )
    assert alone.steps == steps
    assert out.info["checkpoint"] == alone.info["checkpoint"]


def test_a_pilot_that_flags_a_seller_retrains_without_them_and_charges_them_only_the_pilot():
    ids = [1, 2, 3]
    job = _job(ids, pilot=0.3)
    summary = verify(job, _views(ids)).summary
    datasets = [_data(ROWS, seed=1), _data(ROWS, seed=2), _data(ROWS, seed=3, flipped=True)]
    shown: list[tuple[int, int]] = []
    out = training.train(
        job, summary, datasets, listing_ids=ids, validation=_data(200, seed=9),
        progress=lambda step, total: shown.append((step, total)),
    )  # fmt: skip
    steps, pilot = summary["steps"], summary["pilot_steps"]
    assert out.info["appraisal"]["flagged"] == [3]
    assert out.kept == [True, True, False]
    assert (out.info["training_runs"], out.info["steps_run"], out.steps) == (2, pilot + steps, steps)
    first, second = _pld(summary, pilot), _pld(summary, steps)
    assert out.epsilon_per_listing[2] == pytest.approx(first + 1.0)
    assert out.epsilon_per_listing[:2] == [pytest.approx(first + second + 1.0)] * 2
    assert max(out.epsilon_per_listing) <= summary["epsilon_total"] + 1e-9
    assert shown[-1] == (pilot + steps, pilot + steps)
    assert [s for s, _ in shown] == list(range(1, pilot + steps + 1))
    assert out.metrics["accuracy"] > 0.85
