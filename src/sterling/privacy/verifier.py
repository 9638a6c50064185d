"""Privacy-aware type checking: does a job satisfy every listing's terms?

`verify(job, listings)` checks, before any data is touched: the model's
shapes against each listing's schema; that no layer mixes examples; that no
value computed from private data leaves the enclave without a DP mechanism;
the (ε, δ) of training from its parameters (PLD, RDP as a cross-check) plus
what releasing metrics or appraisal values costs; and every listing's terms
(open, per-job ε cap, remaining budget, δ, allowed model families, price
against the payment cap). It returns every violation at once, each naming
the listing, the term, the asked value and the allowed value. The same
function runs in the client, in the enclave, and in the web editor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sterling.data.dataset import Schema
from sterling.errors import UsageError
from sterling.privacy import accountant
from sterling.privacy.graph import (
    MAX_PARAMETERS,
    BatchNorm,
    ShapeProblem,
    infer_shapes,
    input_shape,
    output_problem,
    parameter_count,
)
from sterling.privacy.job import Job

MICRO = 10**6


@dataclass(frozen=True)
class ListingView:
    """What the verifier needs to know about a listing (from the chain and its public manifest)."""

    listing_id: int
    schema: Schema
    max_epsilon_per_job: float
    remaining_epsilon: float
    delta: float
    price_per_job_wei: int
    price_per_epsilon_wei: int
    open: bool = True
    quote_wei: int | None = None  # the price a policy contract quoted this consumer, if any
    allowed_families: tuple[str, ...] | None = None

    def price(self, epsilon: float) -> int:
        if self.quote_wei is not None:
            return self.quote_wei
        return self.price_per_job_wei + self.price_per_epsilon_wei * round(epsilon * MICRO) // MICRO


@dataclass(frozen=True)
class Violation:
    term: str
    message: str
    listing_id: int | None = None
    asked: Any = None
    allowed: Any = None
    field: str | None = None  # where in the job document it points


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": [asdict(v) for v in self.violations], "summary": self.summary}


def verify(job: Job, listings: dict[int, ListingView]) -> Report:
    """Check `job` against the listings it names; every violation at once."""
    report = Report()
    add = report.violations.append
    views = []
    for i, ask in enumerate(job.listings):
        view = listings.get(ask.listing_id)
        if view is None:
            add(
                Violation(
                    "listing",
                    f"listing {ask.listing_id} does not exist",
                    ask.listing_id,
                    field=f"listings.{i}.listing_id",
                )
            )
        else:
            views.append(view)
    if not views:
        return report

    # ---- shapes: one task across all listings, and a model that fits it
    first = views[0].schema
    for v in views[1:]:
        s = v.schema
        if (s.modality, s.shape, s.classes) != (first.modality, first.shape, first.classes):
            add(
                Violation(
                    "schema",
                    f"listing {v.listing_id} holds {s.modality} {s.shape} with classes "
                    f"{list(s.classes)}, unlike listing {views[0].listing_id} ({first.modality} "
                    f"{first.shape}, {list(first.classes)})",
                    v.listing_id,
                    s.shape,
                    first.shape,
                )
            )
    for i, layer in enumerate(job.model.layers):
        if isinstance(layer, BatchNorm):
            add(
                Violation(
                    "model",
                    "batch norm mixes examples, so per-example privacy cannot hold: use "
                    "groupnorm or layernorm",
                    asked="batchnorm",
                    allowed="groupnorm, layernorm",
                    field=f"model.layers.{i}",
                )
            )
    try:
        shapes = infer_shapes(job.model, input_shape(first.shape, first.modality))
        problem = output_problem(job.model, shapes[-1], len(first.classes))
        if problem:
            add(Violation("model", problem, field=f"model.layers.{len(job.model.layers) - 1}"))
        size = parameter_count(job.model, input_shape(first.shape, first.modality))
        if size > MAX_PARAMETERS:
            add(
                Violation(
                    "model",
                    f"the model has {size:,} parameters, more than the enclave trains "
                    f"({MAX_PARAMETERS:,}): use narrower layers or fewer of them",
                    asked=size,
                    allowed=MAX_PARAMETERS,
                    field="model.layers",
                )
            )
    except ShapeProblem as exc:
        add(Violation("model", str(exc), field=f"model.layers.{exc.index}"))

    # ---- nothing computed from private data leaves without a DP mechanism
    ev, rel = job.evaluation, job.release
    if ev.metrics and ev.validation_uri is None and ev.holdout_fraction > 0 and ev.metrics_epsilon == 0:
        add(
            Violation(
                "release",
                "metrics measured on private held-out data would be released without a DP "
                "mechanism: set evaluation.metrics_epsilon > 0 or ask for no metrics",
                asked=list(ev.metrics),
                allowed="metrics with metrics_epsilon > 0",
                field="evaluation.metrics_epsilon",
            )
        )
    if "auc" in ev.metrics and ev.validation_uri is None and ev.holdout_fraction > 0:
        add(
            Violation(
                "release",
                "AUC on private held-out rows has no bounded sensitivity, so no DP mechanism can "
                "release it: measure it on your own validation set (evaluation.validation_uri)",
                asked="auc",
                allowed="accuracy, loss",
                field="evaluation.metrics",
            )
        )
    if ev.checkpoint != "last" and ev.validation_uri is None:
        add(
            Violation(
                "release",
                "choosing the released model by its score on private held-out rows would leak them "
                "without a DP mechanism: give your own validation set (evaluation.validation_uri) "
                "or release the last model",
                asked=ev.checkpoint,
                allowed="last (without evaluation.validation_uri)",
                field="evaluation.checkpoint",
            )
        )
    if rel.drop_flagged and not (rel.appraisal_values and rel.retrain_without_dropped):
        add(
            Violation(
                "release",
                "dropping flagged providers needs their appraisal and a second training run without "
                "them: set release.appraisal_values and release.retrain_without_dropped",
                asked="drop_flagged",
                allowed="with appraisal_values and retrain_without_dropped",
                field="release.drop_flagged",
            )
        )
    if rel.appraisal_values and ev.validation_uri is None:
        add(
            Violation(
                "release",
                "appraisal measures each provider's influence on your own validation set: give "
                "evaluation.validation_uri (a private holdout would make the values unbounded)",
                field="evaluation.validation_uri",
            )
        )
    if rel.appraisal_values and rel.appraisal_epsilon == 0:
        add(
            Violation(
                "release",
                "appraisal values would be released without a DP mechanism: set "
                "release.appraisal_epsilon > 0",
                field="release.appraisal_epsilon",
            )
        )

    # ---- privacy of training (a problem here still lets every listing's terms be checked below)
    t = job.training
    rows = sum(v.schema.rows for v in views)
    train_rows = int(rows * (1 - ev.holdout_fraction))
    trained = _training_privacy(job, train_rows, rows, add)
    runs = 2 if rel.retrain_without_dropped else 1
    appraisal = rel.appraisal_epsilon if rel.appraisal_values else 0.0
    release = ev.metrics_epsilon + appraisal + rel.attribution_epsilon
    # Retraining without dropped providers: the first run (or its pilot) and a whole second run.
    pilot = pilot_steps(job, trained.steps) if trained is not None else None
    pilot_eps = 0.0
    if trained is not None and pilot is not None:
        # The same cached PLD as the run's own ε when the pilot is the whole run.
        pilot_eps = accountant.pld_epsilon(
            accountant.DpSgdParams(trained.sigma, trained.sample_rate, pilot, t.delta)
        )
    total = trained.eps.pld + pilot_eps + release if trained is not None else None

    # ---- every listing's terms
    prices = {}
    for i, ask in enumerate(job.listings):
        if ask.listing_id not in listings:
            continue
        v = listings[ask.listing_id]
        where = f"listings.{i}.epsilon"
        if not v.open:
            add(
                Violation(
                    "open",
                    f"listing {v.listing_id} is not on sale (withdrawn or its budget is spent)",
                    v.listing_id,
                    field=f"listings.{i}.listing_id",
                )
            )
        if total is not None and total > ask.epsilon + 1e-9:
            add(
                Violation(
                    "epsilon",
                    f"listing {v.listing_id}: the job spends ε = {total:.4f} but reserves only "
                    f"{ask.epsilon:g}",
                    v.listing_id,
                    round(total, 6),
                    ask.epsilon,
                    where,
                )
            )
        if ask.epsilon > v.max_epsilon_per_job:
            add(
                Violation(
                    "max_epsilon_per_job",
                    f"listing {v.listing_id}: ε {ask.epsilon:g} is above the per-job "
                    f"cap {v.max_epsilon_per_job:g}",
                    v.listing_id,
                    ask.epsilon,
                    v.max_epsilon_per_job,
                    where,
                )
            )
        if ask.epsilon > v.remaining_epsilon:
            add(
                Violation(
                    "budget",
                    f"listing {v.listing_id}: ε {ask.epsilon:g} is above the {v.remaining_epsilon:g} "
                    "left in its budget",
                    v.listing_id,
                    ask.epsilon,
                    v.remaining_epsilon,
                    where,
                )
            )
        if t.delta > v.delta:
            add(
                Violation(
                    "delta",
                    f"listing {v.listing_id}: δ {t.delta:g} is above its δ {v.delta:g}",
                    v.listing_id,
                    t.delta,
                    v.delta,
                    "training.delta",
                )
            )
        family = job.model.family
        if v.allowed_families is not None and family not in v.allowed_families:
            add(
                Violation(
                    "model_family",
                    f"listing {v.listing_id} allows {', '.join(v.allowed_families)}, not {family}",
                    v.listing_id,
                    family,
                    list(v.allowed_families),
                    "model",
                )
            )
        prices[v.listing_id] = v.price(ask.epsilon)
    price_total = sum(prices.values())
    if price_total + job.bonus_pool_wei > job.payment_cap_wei:
        bonus = f" plus a bonus pool of {job.bonus_pool_wei}" if job.bonus_pool_wei else ""
        add(
            Violation(
                "price",
                f"the listings cost {price_total} wei{bonus}, above the payment cap {job.payment_cap_wei}",
                asked=price_total + job.bonus_pool_wei,
                allowed=job.payment_cap_wei,
                field="payment_cap_wei",
            )
        )
    if trained is None:
        return report
    q, steps, sigma, eps = trained.sample_rate, trained.steps, trained.sigma, trained.eps
    report.summary = {
        "model_family": job.model.family,
        "train_rows": train_rows,
        "sample_rate": q,
        "steps": steps,
        "noise_multiplier": sigma,
        "delta": t.delta,
        "epsilon_training": {"pld": eps.pld, "rdp": eps.rdp},
        "training_runs": runs,
        "pilot_steps": pilot,
        "epsilon_pilot": pilot_eps if pilot is not None else None,
        "epsilon_metrics": ev.metrics_epsilon,
        "epsilon_appraisal": appraisal,
        "epsilon_attribution": rel.attribution_epsilon,
        "epsilon_total": total,
        "epsilon_per_listing": {str(a.listing_id): total for a in job.listings if a.listing_id in listings},
        "price_per_listing_wei": {str(k): v for k, v in prices.items()},
        "price_total_wei": price_total,
        "bonus_pool_wei": job.bonus_pool_wei,
        "payment_cap_wei": job.payment_cap_wei,
    }
    return report


@dataclass(frozen=True)
class _Trained:
    sample_rate: float
    steps: int
    sigma: float
    eps: accountant.Epsilon


def pilot_steps(job: Job, steps: int) -> int | None:
    """Steps of the run appraisal looks at before the final model is trained, or None (no retraining)."""
    if not job.release.retrain_without_dropped:
        return None
    return max(1, min(steps, math.ceil(job.release.pilot_fraction * steps)))


def _training_privacy(job: Job, train_rows: int, rows: int, add: Any) -> _Trained | None:
    """(q, steps, σ, ε) of the job's training, or None after adding the violation that prevents it."""
    t, ev = job.training, job.evaluation
    if train_rows < 1:
        add(Violation("training", f"no rows left to train on ({rows} rows, holdout {ev.holdout_fraction})"))
        return None
    q = t.sample_rate if t.sample_rate is not None else (t.expected_batch_size or 1) / train_rows
    if q > 1:
        add(
            Violation(
                "training",
                f"expected batch size {t.expected_batch_size} exceeds the {train_rows} training rows",
                asked=t.expected_batch_size,
                allowed=train_rows,
                field="training.expected_batch_size",
            )
        )
        return None
    steps = t.steps if t.steps is not None else max(1, math.ceil((t.epochs or 1) / q))
    try:
        sigma = t.noise_multiplier or accountant.calibrate_noise(
            target_epsilon=t.target_epsilon or 1.0, sample_rate=q, steps=steps, delta=t.delta
        )
        eps = accountant.epsilon(accountant.DpSgdParams(sigma, q, steps, t.delta))
    except UsageError as exc:
        add(Violation("training", str(exc), field="training"))
        return None
    return _Trained(q, steps, sigma, eps)
