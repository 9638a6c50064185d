"""Privacy-aware type checking: does a job satisfy every listing's terms?

`verify(job, listings)` checks, before any data is touched, and returns
every violation at once, each naming the listing, the term, the asked value
and the allowed value. It is a set of small rules, each returning its own
violations (as Opacus's validators do): the listings (they exist, hold one
task, and no dataset is named twice); the model (shapes, no layer that mixes
examples, size); the releases (nothing computed from private data leaves
without a DP mechanism); and, per listing, its terms (open, per-job ε cap,
remaining budget, δ, allowed model families), then the price.

A job that passes gets a `TrainingPlan` (`sterling.privacy.plan`): the
DP-SGD run and every release with the parameters that were checked, ε of
the worst outcome composed as one privacy loss distribution under
replace-one adjacency. The enclave executes that plan as given. The same
function runs in the client, in the enclave (authoritatively), and in the
web editor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from sterling.data.dataset import Schema
from sterling.errors import UsageError
from sterling.privacy import accountant, oblivious
from sterling.privacy import mechanisms as mech
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
from sterling.privacy.mechanisms import DiscreteLaplace, Gaussian
from sterling.privacy.plan import Oblivious, TrainingPlan

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
    #: The ciphertext's hash, which names the data (and its one budget); None where it is not known.
    data_hash: bytes | None = None

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
    #: The plan the enclave will execute; None when the job fails.
    plan: TrainingPlan | None = None
    #: Price per listing, as quoted to this consumer.
    prices: dict[int, int] = field(default_factory=dict)
    job: Job | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The plan's figures as JSON (empty without a plan), for people and pages."""
        if self.plan is None or self.job is None:
            return {}
        return self.plan.summary(
            price_per_listing=self.prices,
            bonus_pool_wei=self.job.bonus_pool_wei,
            payment_cap_wei=self.job.payment_cap_wei,
            family=self.job.model.family,
        )

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": [asdict(v) for v in self.violations], "summary": self.summary}


Add = Callable[[Violation], None]


def verify(job: Job, listings: dict[int, ListingView]) -> Report:
    """Check `job` against the listings it names; every violation at once, and the plan if it passes."""
    report = Report(job=job)
    add = report.violations.append
    views = _known_listings(job, listings, add)
    if not views:
        return report
    _one_task(views, add)
    _each_dataset_once(job, views, add)
    _model(job, views[0].schema, add)
    _releases(job, add)
    plan = _plan(job, views, add)
    worst = plan.epsilon(plan.worst_case()) if plan is not None else None
    for i, ask in enumerate(job.listings):
        if ask.listing_id in listings:
            _terms(job, i, listings[ask.listing_id], worst, add)
            report.prices[ask.listing_id] = listings[ask.listing_id].price(ask.epsilon)
    _price(job, sum(report.prices.values()), add)
    if plan is not None:
        report.plan = plan
    return report


# ------------------------------------------------------------------------ rules


def _known_listings(job: Job, listings: dict[int, ListingView], add: Add) -> list[ListingView]:
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
    return views


def _one_task(views: list[ListingView], add: Add) -> None:
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


def _each_dataset_once(job: Job, views: list[ListingView], add: Add) -> None:
    """A listing and a listing derived from it are the same data: a job may train on it once.

    Naming both would put each row in the training set twice (a neighbouring dataset then differs
    in two rows, not one) for the accounting of once.
    """
    seen: dict[bytes, int] = {}
    where = {a.listing_id: i for i, a in enumerate(job.listings)}
    for v in views:
        if v.data_hash is None:
            continue
        if v.data_hash in seen:
            add(
                Violation(
                    "dataset",
                    f"listings {seen[v.data_hash]} and {v.listing_id} are the same data (one is "
                    "derived from the other): a job may train on a dataset once; keep one of them",
                    v.listing_id,
                    asked=[seen[v.data_hash], v.listing_id],
                    allowed="each dataset once",
                    field=f"listings.{where[v.listing_id]}.listing_id",
                )
            )
        else:
            seen[v.data_hash] = v.listing_id


def _model(job: Job, schema: Schema, add: Add) -> None:
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
        shape = input_shape(schema.shape, schema.modality)
        shapes = infer_shapes(job.model, shape)
        problem = output_problem(job.model, shapes[-1], len(schema.classes))
        if problem:
            add(Violation("model", problem, field=f"model.layers.{len(job.model.layers) - 1}"))
        size = parameter_count(job.model, shape)
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


def _releases(job: Job, add: Add) -> None:
    """Nothing computed from private data leaves the enclave without a DP mechanism."""
    ev, rel = job.evaluation, job.release
    private_eval = ev.validation_uri is None and ev.holdout_fraction > 0
    if ev.metrics and private_eval and ev.metrics_epsilon == 0:
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
    if "auc" in ev.metrics and private_eval:
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


def _terms(job: Job, i: int, v: ListingView, worst: float | None, add: Add) -> None:
    """One listing's terms: on sale, ε within the reservation, cap and budget, δ, model family."""
    ask = job.listings[i]
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
    if worst is not None and math.ceil(worst * MICRO) > round(ask.epsilon * MICRO):
        add(
            Violation(
                "epsilon",
                f"listing {v.listing_id}: the job spends up to ε = {worst:.4f} (replace-one, all it "
                f"releases composed) but reserves only {ask.epsilon:g}",
                v.listing_id,
                math.ceil(worst * MICRO) / MICRO,
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
    if job.training.delta > v.delta:
        add(
            Violation(
                "delta",
                f"listing {v.listing_id}: δ {job.training.delta:g} is above its δ {v.delta:g}",
                v.listing_id,
                job.training.delta,
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


def _price(job: Job, total: int, add: Add) -> None:
    if total + job.bonus_pool_wei > job.payment_cap_wei:
        bonus = f" plus a bonus pool of {job.bonus_pool_wei}" if job.bonus_pool_wei else ""
        add(
            Violation(
                "price",
                f"the listings cost {total} wei{bonus}, above the payment cap {job.payment_cap_wei}",
                asked=total + job.bonus_pool_wei,
                allowed=job.payment_cap_wei,
                field="payment_cap_wei",
            )
        )


# ------------------------------------------------------------------------- plan


def pilot_steps(job: Job, steps: int) -> int | None:
    """Steps of the run appraisal looks at before the final model is trained, or None (no retraining)."""
    if not job.release.retrain_without_dropped:
        return None
    return max(1, min(steps, math.ceil(job.release.pilot_fraction * steps)))


def _plan(job: Job, views: list[ListingView], add: Add) -> TrainingPlan | None:
    """The plan the enclave will run, or None after adding the violation that prevents one."""
    t, ev = job.training, job.evaluation
    rows = sum(v.schema.rows for v in views)
    train_rows = int(rows * (1 - ev.holdout_fraction))
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
    pilot = pilot_steps(job, steps)
    total_steps = steps + (pilot or 0)
    obl = Oblivious(t.delta * oblivious.OVERFLOW_SHARE, total_steps) if t.oblivious else None
    delta = t.delta - (obl.delta_overflow if obl else 0.0)
    private_eval = ev.validation_uri is None and ev.holdout_fraction > 0
    try:
        sigma = t.noise_multiplier or accountant.calibrate_noise(
            target_epsilon=t.target_epsilon or 1.0, sample_rate=q, steps=steps, delta=delta
        )
        accountant.bounded(accountant.DpSgdParams(sigma, q, steps, delta))
        releases = _release_mechanisms(job, private_eval, delta)
        plan = TrainingPlan(
            job_hash="0x" + job.job_hash().hex(),
            listings=tuple(a.listing_id for a in job.listings),
            delta=t.delta,
            rows=rows,
            train_rows=train_rows,
            eval_rows=rows - train_rows if private_eval else 0,
            clipping_norm=t.clipping_norm,
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            pilot_steps=pilot,
            oblivious=obl,
            releases=releases,
        )
        plan.epsilon(plan.worst_case())  # refuses here, with its reason, what cannot be accounted
    except UsageError as exc:
        add(Violation("training", str(exc), field="training"))
        return None
    return plan


def _release_mechanisms(job: Job, private_eval: bool, delta: float) -> tuple[DiscreteLaplace | Gaussian, ...]:
    """Every release the job asks for, with its replace-one sensitivity on the grid.

    Sums over rows bounded to ±B move by 2B when a row is replaced; a count of correct predictions
    by 1; a sum of losses clipped to [0, L] by L (`mechanisms.*_release`).
    """
    ev, rel = job.evaluation, job.release
    out: list[DiscreteLaplace | Gaussian] = []
    if rel.appraisal_values and ev.validation_uri is not None and rel.appraisal_epsilon > 0:
        screening = rel.appraisal_epsilon * rel.screening_share
        out.append(mech.values_release(rel.appraisal_epsilon - screening))
        out.append(mech.screening_release(screening))
    if private_eval and ev.metrics and ev.metrics_epsilon > 0:
        share = ev.metrics_epsilon / len(ev.metrics)
        for name in ev.metrics:
            if name == "accuracy":
                out.append(mech.accuracy_release(share))
            elif name == "loss":
                out.append(mech.loss_release(share))
    if rel.attribution_epsilon > 0:
        from sterling.appraisal.attribution import gaussian_noise_multiplier

        out.append(Gaussian("attribution", gaussian_noise_multiplier(rel.attribution_epsilon, delta)))
    return tuple(out)
