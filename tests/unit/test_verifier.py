"""The verifier and the accountant: a job is checked against every listing, all violations at once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sterling.data.dataset import Schema
from sterling.errors import UsageError
from sterling.privacy import accountant
from sterling.privacy.dpsgd import build_module
from sterling.privacy.graph import MAX_PARAMETERS, parameter_count, template
from sterling.privacy.job import Job
from sterling.privacy.verifier import ListingView, verify

STERLING = [sys.executable, "-m", "sterling.cli"]
IMAGES = Schema("image", (28, 28, 3), "uint8", ("0", "1", "2", "3", "4"), 600)


def view(lid: int, **kw) -> ListingView:
    base = dict(
        listing_id=lid,
        schema=IMAGES,
        max_epsilon_per_job=3.0,
        remaining_epsilon=10.0,
        delta=1e-5,
        price_per_job_wei=1000,
        price_per_epsilon_wei=10**6,
    )
    return ListingView(**{**base, **kw})


def job(**kw) -> Job:
    doc = {
        "listings": [{"listing_id": 1, "epsilon": 3.0}, {"listing_id": 2, "epsilon": 3.0}],
        "model": template("cnn", classes=5).model_dump(mode="json"),
        "training": {"epochs": 2, "expected_batch_size": 64, "target_epsilon": 2.5},
        "evaluation": {"holdout_fraction": 0.2, "metrics": ["accuracy"], "metrics_epsilon": 0.2},
        "payment_cap_wei": 10**9,
    }
    for key, value in kw.items():
        doc[key] = value if not isinstance(value, dict) else {**doc.get(key, {}), **value}
    return Job.parse(doc)


def test_a_job_that_satisfies_every_listing_passes_with_a_summary():
    report = verify(job(), {1: view(1), 2: view(2)})
    assert report.ok, report.violations
    s = report.summary
    assert s["model_family"] == "cnn"
    assert s["neighbours"] == "replace_one"
    assert s["train_rows"] == 960
    assert s["epsilon_training"]["pld"] <= 2.5
    # The run and the accuracy release (a count with discrete Laplace noise at ε 0.2) in one PLD:
    # more than the run alone, never more than the two added.
    assert s["epsilon_training"]["pld"] < s["epsilon_total"] <= s["epsilon_training"]["pld"] + 0.2 + 1e-9
    plan = report.plan
    assert plan is not None
    assert [m.name for m in plan.worst_case()] == ["training", "metrics.accuracy"]
    assert plan.release("metrics.accuracy").sensitivity == 1
    assert s["price_per_listing_wei"] == {"1": 1000 + 3 * 10**6, "2": 1000 + 3 * 10**6}
    assert s["price_total_wei"] == 2 * (1000 + 3 * 10**6)


def test_all_violations_are_reported_at_once_with_listing_term_and_numbers():
    listings = {
        1: view(1, max_epsilon_per_job=2.0, remaining_epsilon=1.0, allowed_families=("logistic_regression",)),
        2: view(2, delta=1e-7, open=False),
    }
    report = verify(job(payment_cap_wei=10), listings)
    found = {(v.listing_id, v.term) for v in report.violations}
    assert {
        (1, "max_epsilon_per_job"),
        (1, "budget"),
        (1, "model_family"),
        (2, "delta"),
        (2, "open"),
        (None, "price"),
    } <= found
    cap = next(v for v in report.violations if v.term == "max_epsilon_per_job")
    assert (cap.asked, cap.allowed, cap.field) == (3.0, 2.0, "listings.0.epsilon")
    assert "listing 1" in cap.message


def test_epsilon_spent_above_the_reservation():
    # σ 0.8 over 30 steps at q 1/15 is ε ≈ 5.6 under replace-one, above the 3 reserved.
    report = verify(job(training={"target_epsilon": None, "noise_multiplier": 0.8}), {1: view(1), 2: view(2)})
    eps = [v for v in report.violations if v.term == "epsilon"]
    assert len(eps) == 2
    assert eps[0].asked > eps[0].allowed == 3.0


def test_shape_mismatch_batchnorm_and_unknown_listing():
    bad_model = {"layers": [{"type": "flatten"}, {"type": "batchnorm"}, {"type": "linear", "out": 3}]}
    report = verify(job(model=bad_model), {1: view(1)})
    terms = [(v.term, v.field) for v in report.violations]
    assert ("listing", "listings.1.listing_id") in terms
    assert ("model", "model.layers.1") in terms  # batch norm
    assert any("outputs (3,)" in v.message for v in report.violations)
    conv_on_table = verify(job(), {1: view(1, schema=Schema("tabular", (30,), "float32", ("a", "b"), 500))})
    assert any("conv2d needs a (C, H, W) input" in v.message for v in conv_on_table.violations)


def test_a_model_too_large_for_the_enclave_is_refused_with_its_size():
    wide = {"layers": [{"type": "flatten"}, {"type": "linear", "out": 65536}, {"type": "linear", "out": 5}]}
    (v,) = [v for v in verify(job(model=wide), {1: view(1), 2: view(2)}).violations if v.term == "model"]
    # 2,352 pixels + 1 bias into 65,536 units, then 65,537 into 5 outputs.
    assert v.asked == 2353 * 65536 + 65537 * 5
    assert v.allowed == MAX_PARAMETERS
    assert "154,533,893 parameters" in v.message
    assert v.field == "model.layers"
    for family in ("logistic_regression", "mlp", "cnn"):
        graph = template(family, classes=5)
        assert parameter_count(graph, (3, 28, 28)) == sum(
            p.numel() for p in build_module(graph, (3, 28, 28)).parameters()
        )


def test_mixed_schemas_and_unprotected_releases():
    other = Schema("image", (64, 64, 3), "uint8", ("0", "1", "2", "3", "4"), 100)
    report = verify(
        job(evaluation={"metrics_epsilon": 0.0}, release={"appraisal_values": True}),
        {1: view(1), 2: view(2, schema=other)},
    )
    terms = [v.term for v in report.violations]
    assert "schema" in terms
    # Metrics without ε, appraisal values without ε, and appraisal without the consumer's own set.
    assert terms.count("release") == 3
    fields = {v.field for v in report.violations if v.term == "release"}
    assert fields == {"evaluation.metrics_epsilon", "release.appraisal_epsilon", "evaluation.validation_uri"}


def test_terms_are_checked_even_when_training_cannot_be_accounted():
    report = verify(
        job(
            listings=[{"listing_id": 1, "epsilon": 12.0}],
            training={"expected_batch_size": 10_000},  # more than the rows: no ε can be computed
        ),
        {1: view(1, remaining_epsilon=5.0)},
    )
    terms = {v.term for v in report.violations}
    assert {"training", "budget", "max_epsilon_per_job"} <= terms
    assert report.summary == {}


def test_malformed_jobs_name_every_field():
    with pytest.raises(UsageError) as info:
        Job.parse(
            {
                "listings": [{"listing_id": 0, "epsilon": -1}],
                "model": {"layers": [{"type": "conv3d"}]},
                "training": {"epochs": 1, "steps": 5},
                "payment_cap_wei": -1,
            }
        )
    message = str(info.value)
    for part in (
        "listings.0.listing_id",
        "listings.0.epsilon",
        "model.layers.0",
        "training",
        "payment_cap_wei",
    ):
        assert part in message


def test_job_hash_is_canonical():
    a = job()
    b = Job.parse(json.loads(json.dumps(a.model_dump(mode="json"), indent=3)))
    assert a.job_hash() == b.job_hash()
    assert job(payment_cap_wei=11).job_hash() != a.job_hash()


@pytest.mark.parametrize(("target", "q", "steps"), [(1.0, 0.01, 1000), (3.0, 0.2, 60), (0.5, 0.05, 300)])
def test_calibration_never_overshoots(target, q, steps):
    sigma = accountant.calibrate_noise(target_epsilon=target, sample_rate=q, steps=steps, delta=1e-5)
    eps = accountant.epsilon(accountant.DpSgdParams(sigma, q, steps, 1e-5))
    assert eps.pld <= target
    assert eps.pld > 0.97 * target  # and is tight
    assert eps.rdp >= eps.pld
    assert accountant.pld_epsilon(accountant.DpSgdParams(sigma * 0.98, q, steps, 1e-5)) > target * 0.99


def test_accountant_refuses_nonsense():
    with pytest.raises(UsageError, match="sample rate"):
        accountant.DpSgdParams(1.0, 1.5, 10, 1e-5)
    with pytest.raises(UsageError, match="target epsilon"):
        accountant.calibrate_noise(target_epsilon=0, sample_rate=0.1, steps=10, delta=1e-5)


def test_cli_epsilon_and_verify(tmp_path):
    out = subprocess.run(
        [
            *STERLING,
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1.1",
            "--sample-rate",
            "0.01",
            "--steps",
            "1000",
            "--delta",
            "1e-5",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    eps = json.loads(out.stdout)
    assert set(eps) >= {"pld", "rdp"}
    # Replace-one: the same run is ε 1.3 to 2.0 under add/remove; the Rényi figure is an upper bound.
    assert 2.2 < eps["pld"] < 2.8 < eps["rdp"]
    job_file, listings_file = tmp_path / "job.json", tmp_path / "listings.json"
    job_file.write_text(json.dumps(job().model_dump(mode="json")))
    rows = [
        {
            "listing_id": i,
            "schema": IMAGES.to_json(),
            "max_epsilon_per_job": cap,
            "remaining_epsilon": 10,
            "delta": 1e-5,
            "price_per_job_wei": 1,
            "price_per_epsilon_wei": 1,
        }
        for i, cap in ((1, 3.0), (2, 3.0))
    ]
    listings_file.write_text(json.dumps(rows))
    args = [*STERLING, "job", "verify", str(job_file), "--listings", str(listings_file), "--format", "json"]
    ok = subprocess.run(args, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    rows[1]["max_epsilon_per_job"] = 1.0
    listings_file.write_text(json.dumps(rows))
    bad = subprocess.run(args, capture_output=True, text=True)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["violations"][0]["listing_id"] == 2
    assert report["violations"][0]["term"] == "max_epsilon_per_job"


def test_metrics_on_the_consumers_own_validation_set_need_no_epsilon():
    own = job(evaluation={"holdout_fraction": 0.0, "metrics_epsilon": 0.0, "validation_uri": "memory://val"})
    report = verify(own, {1: view(1), 2: view(2)})
    assert report.ok, report.violations
    assert report.summary["train_rows"] == 1200
    with pytest.raises(UsageError, match="not both"):
        job(evaluation={"holdout_fraction": 0.2, "validation_uri": "memory://val"})


def test_auc_on_private_held_out_rows_is_refused_but_allowed_on_the_consumers_own_set():
    private = verify(job(evaluation={"metrics": ["accuracy", "auc"]}), {1: view(1), 2: view(2)})
    (problem,) = [v for v in private.violations if v.field == "evaluation.metrics"]
    assert problem.term == "release"
    assert "validation set" in problem.message
    own = job(
        evaluation={
            "holdout_fraction": 0.0,
            "validation_uri": "file:///v/" + "ab" * 32,
            "metrics": ["accuracy", "auc"],
            "metrics_epsilon": 0.0,
        }
    )
    assert verify(own, {1: view(1), 2: view(2)}).ok
