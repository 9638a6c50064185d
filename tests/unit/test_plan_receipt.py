"""The training plan and the privacy receipt: one accountant, replace-one, and a charge anyone can redo."""

from __future__ import annotations

import json
from dataclasses import replace

import dp_accounting as dpa
import pytest
from dp_accounting import pld

from sterling.data.dataset import Schema
from sterling.errors import UsageError
from sterling.privacy.graph import template
from sterling.privacy.job import Job
from sterling.privacy.mechanisms import DiscreteLaplace, DpSgd
from sterling.privacy.plan import TrainingPlan
from sterling.privacy.receipt import Receipt, prior_name
from sterling.privacy.verifier import ListingView, verify

SCHEMA = Schema("tabular", (5,), "float32", ("no", "yes"), 400)


def _plan(**release: object) -> TrainingPlan:
    job = Job.parse(
        {
            "listings": [{"listing_id": 1, "epsilon": 6.0}, {"listing_id": 2, "epsilon": 6.0}],
            "model": template("logistic_regression", classes=2).model_dump(mode="json"),
            "training": {"epochs": 4, "expected_batch_size": 40, "target_epsilon": 1.5, "delta": 1e-5},
            "evaluation": {
                "holdout_fraction": 0.0,
                "validation_uri": "file:///mine",
                "metrics": ["accuracy"],
            },
            "release": {"appraisal_values": True, "appraisal_epsilon": 0.6, **release},
            "payment_cap_wei": 10**18,
        }
    )
    views = {i: ListingView(i, SCHEMA, 8.0, 20.0, 1e-5, 0, 0, data_hash=bytes([i]) * 32) for i in (1, 2)}
    report = verify(job, views)
    assert report.plan is not None, report.violations
    return report.plan


def test_dp_sgd_is_accounted_under_replace_one_which_costs_more_than_add_remove():
    plan = _plan()
    run = plan.run
    event = dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(run.sample_rate, dpa.GaussianDpEvent(run.noise_multiplier)), run.steps
    )
    by = {}
    for rel in (dpa.NeighboringRelation.REPLACE_ONE, dpa.NeighboringRelation.ADD_OR_REMOVE_ONE):
        acc = pld.PLDAccountant(rel)
        acc.compose(event)
        by[rel] = acc.get_epsilon(plan.delta)
    charged = plan.epsilon((run,))
    assert charged == pytest.approx(by[dpa.NeighboringRelation.REPLACE_ONE], rel=1e-6)
    assert charged > 1.3 * by[dpa.NeighboringRelation.ADD_OR_REMOVE_ONE]
    assert plan.neighbours == "replace_one"


def test_every_release_is_composed_in_one_pld_not_added():
    plan = _plan(retrain_without_dropped=True, pilot_fraction=0.5)
    parts = plan.worst_case()
    assert [m.name for m in parts] == ["pilot", "appraisal.values", "appraisal.screening", "training"]
    whole = plan.epsilon(parts)
    alone = [plan.epsilon((m,)) for m in parts]
    assert max(alone) < whole < sum(alone)
    values = plan.release("appraisal.values")
    assert isinstance(values, DiscreteLaplace)
    assert values.sensitivity == 2 * 65536
    assert values.epsilon + plan.release("appraisal.screening").epsilon == pytest.approx(0.6)  # type: ignore[union-attr]


def test_a_plan_survives_json_and_its_hash_names_it():
    plan = _plan(retrain_without_dropped=True, pilot_fraction=0.5)
    again = TrainingPlan.from_json(json.loads(plan.canonical()))
    assert again == plan
    assert again.sha256() == plan.sha256()
    assert replace(plan, noise_multiplier=plan.noise_multiplier * 0.5).sha256() != plan.sha256()
    doc = plan.to_json()
    with pytest.raises(UsageError, match="adjacency"):
        TrainingPlan.from_json({**doc, "neighbours": "add_remove"})
    with pytest.raises(UsageError, match="training plan"):
        TrainingPlan.from_json({**doc, "format": "something else"})


def test_progress_follows_a_public_schedule_whatever_path_the_data_chose():
    plan = _plan(retrain_without_dropped=True, pilot_fraction=0.5)
    assert plan.schedule_steps == plan.pilot_steps + plan.steps  # type: ignore[operator]
    shown = [plan.progress_epsilon(s) for s in range(0, plan.schedule_steps + 1, 7)]
    assert shown == sorted(shown)
    assert shown[0] == 0.0
    # An upper bound at every step of the worst path, and the worst path's total at the end.
    assert plan.progress_epsilon(plan.schedule_steps) >= plan.epsilon(plan.worst_case()) - 1e-3


def _receipt(plan: TrainingPlan, ran: list[list]) -> Receipt:  # type: ignore[type-arg]
    return Receipt.build(
        chain_id=31337, marketplace="0x" + "ab" * 20, job_id=7, outcome="model", plan=plan, ran=ran
    )


def test_a_receipt_recomputes_to_its_charge_and_names_what_is_wrong_when_tampered():
    plan = _plan(retrain_without_dropped=True, pilot_fraction=0.5)
    kept, dropped = list(plan.worst_case()), list(plan.retrained(kept=False))
    receipt = _receipt(plan, [kept, dropped])
    assert receipt.micro_epsilon[0] > receipt.micro_epsilon[1] > 0
    again = Receipt.from_bytes(receipt.to_bytes())
    assert again == receipt
    assert again.problems(charged=receipt.micro_epsilon) == []
    # The chain charged less than ran on listing 2: a mismatch.
    assert any("listing 2" in p for p in again.problems(charged=[receipt.micro_epsilon[0], 1]))
    # A run with less noise than the plan, or more steps, is not the plan's.
    weak = [replace(kept[0], noise_multiplier=kept[0].noise_multiplier / 2), *kept[1:]]
    assert any("does not allow" in p for p in _receipt(plan, [weak, dropped]).problems())
    longer = [kept[0].prefix(plan.steps + 5), *kept[1:]]
    assert any("does not allow" in p for p in _receipt(plan, [longer, dropped]).problems())
    # A charge edited after the fact no longer matches its mechanisms.
    doc = json.loads(receipt.to_bytes())
    doc["charges"][1]["micro_epsilon"] = 1
    forged = Receipt.from_bytes(json.dumps(doc).encode())
    assert any("compose to" in p for p in forged.problems())
    # An earlier holder's pilot and appraisal, charged by the takeover, are the plan's mechanisms too.
    prior = [prior_name(1, m) for m in (plan.pilot, *plan.appraisal)]
    assert _receipt(plan, [[*prior, *kept], [*prior, *dropped]]).problems() == []
    assert _receipt(plan, [[DpSgd("mystery", 1.0, 0.1, 3)], []]).problems() != []
