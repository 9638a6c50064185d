"""Releasing the best epoch by the consumer's own validation set: allowed only there, and really the best."""

from __future__ import annotations

import numpy as np
import torch

from sterling.crypto.entropy import SecretRandom
from sterling.data.dataset import Dataset, Schema
from sterling.enclave.checkpoints import Checkpoints
from sterling.enclave.metrics import metrics_of
from sterling.enclave.training import Training
from sterling.privacy.graph import template
from sterling.privacy.job import Job
from sterling.privacy.verifier import ListingView, verify

FEATURES = 5
SCHEMA = Schema("tabular", (FEATURES,), "float32", ("no", "yes"), 400)


def _data(rows: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 1.5, -1.0]) + 0.5 * rng.normal(size=rows) > 0).astype(np.int64)
    return Dataset(x, y, Schema("tabular", (FEATURES,), "float32", ("no", "yes"), rows))


def _job(**evaluation: object) -> Job:
    return Job.parse(
        {
            "listings": [{"listing_id": 1, "epsilon": 2.0}],
            "model": template("logistic_regression", classes=2).model_dump(mode="json"),
            "training": {
                "epochs": 8,
                "expected_batch_size": 40,
                "target_epsilon": 1.5,
                "learning_rate": 2.0,
                "optimizer": "momentum",
            },
            "evaluation": {"holdout_fraction": 0.0, "metrics": ["accuracy"], **evaluation},
            "payment_cap_wei": 10**18,
        }
    )


VIEW = ListingView(1, SCHEMA, 2.0, 10.0, 1e-5, 0, 0)


def test_choosing_a_checkpoint_by_private_held_out_rows_is_refused():
    report = verify(_job(checkpoint="best_accuracy", holdout_fraction=0.2, metrics_epsilon=0.1), {1: VIEW})
    assert [v.field for v in report.violations] == ["evaluation.checkpoint"]
    assert "validation_uri" in report.violations[0].message
    mine = _job(checkpoint="best_accuracy", validation_uri="file:///mine")
    assert verify(mine, {1: VIEW}).ok


def test_the_released_model_is_the_best_scored_epoch_and_costs_no_more_epsilon():
    job = _job(checkpoint="best_accuracy", validation_uri="file:///mine")
    plan = verify(job, {1: VIEW}).plan
    assert plan is not None
    validation = _data(200, seed=2)
    rng = SecretRandom.for_tests(1)
    out = Training(job, plan, [_data(400, seed=1)], listing_ids=[1], validation=validation, rng=rng).run()
    chosen = out.info["checkpoint"]
    curve = chosen["curve"]
    per_epoch = round(1 / plan.sample_rate)
    assert [c["step"] for c in curve] == [per_epoch * (i + 1) for i in range(len(curve))]
    assert curve[-1]["step"] == out.steps
    best = max(c["accuracy"] for c in curve)
    assert chosen["selected_step"] == max(c["step"] for c in curve if c["accuracy"] == best)
    assert out.metrics["accuracy"] == best  # the released model scores what the chosen epoch scored
    # ε is that of every step trained, whichever epoch is released.
    other = _job(validation_uri="file:///mine")
    other_plan = verify(other, {1: VIEW}).plan
    assert other_plan is not None
    last = Training(
        other, other_plan, [_data(400, seed=1)], listing_ids=[1], validation=validation, rng=rng
    ).run()
    assert out.epsilon_spent == last.epsilon_spent
    assert last.info["checkpoint"] == {"rule": "last"}


def test_checkpoints_keep_the_best_state_and_the_models_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 2))
    data = _data(100, seed=3)
    x, y = torch.from_numpy(data.features), torch.from_numpy(data.labels)
    picker = Checkpoints(x, y, "softmax_cross_entropy", "best_loss", every=2)
    model.train()
    picker.seen(model, 1)  # not an epoch end: not scored
    assert picker.curve == []
    picker.seen(model, 2)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.mul_(-5.0)  # a much worse model
    picker.seen(model, 4)
    assert model.training  # scoring put the model back in training mode
    picker.restore(model, 5)
    assert [c["step"] for c in picker.curve] == [2, 4, 5]
    assert picker.best_step == 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in good.items())
    scored = metrics_of(model, x, y, loss="softmax_cross_entropy", wanted=("loss",))["loss"]
    assert scored == min(c["loss"] for c in picker.curve)
