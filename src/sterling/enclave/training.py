"""Inside the enclave: train a verified job on decrypted data, evaluate, appraise.

`train(...)` takes the verifier's summary (the noise multiplier, sampling
rate and steps it proved within every listing's terms) and never chooses its
own: what was verified is what runs. The budget filter stops training before
the step that would spend more than the job reserved, after setting aside
the ε that releasing metrics and appraisal values costs.

What leaves this module is the model, the ε actually spent, and metrics
that are either measured on the consumer's own validation set (no private
data, no noise) or measured on private held-out rows and released through
the Laplace mechanism at the job's `metrics_epsilon`. Training losses are
computed from private data and are never reported outside the enclave.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sterling.appraisal import AppraisalData, AppraisalResult, RowShare
from sterling.appraisal.screening import LabelAgreement, Screening
from sterling.data.dataset import Dataset
from sterling.enclave.checkpoints import Checkpoints
from sterling.enclave.metrics import metrics_of, private_metrics
from sterling.errors import UsageError
from sterling.privacy import accountant
from sterling.privacy.bundle import ModelBundle
from sterling.privacy.dpsgd import DPSGD
from sterling.privacy.features import to_model_input
from sterling.privacy.graph import input_shape
from sterling.privacy.job import Job

Progress = Callable[[int, int], None]  # (steps done, steps planned)


@dataclass
class Split:
    """Training rows from every listing, and where evaluation happens."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    owner: np.ndarray  # index into the job's listings, per training row
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    eval_is_private: bool
    in_shape: tuple[int, ...]
    classes: tuple[str, ...]


def split(job: Job, datasets: Sequence[Dataset], validation: Dataset | None = None) -> Split:
    """Pool the listings' rows and hold out `holdout_fraction` of them, exactly as the verifier counted."""
    if not datasets:
        raise UsageError("a job needs at least one dataset")
    schema = datasets[0].schema
    in_shape = input_shape(schema.shape, schema.modality)
    features = np.concatenate([d.features for d in datasets])
    labels = np.concatenate([d.labels for d in datasets])
    owner = np.concatenate([np.full(d.schema.rows, i) for i, d in enumerate(datasets)])
    rows = len(labels)
    train_rows = int(rows * (1 - job.evaluation.holdout_fraction))
    perm = np.random.default_rng(job.training.seed).permutation(rows)
    train_idx, hold_idx = np.sort(perm[:train_rows]), np.sort(perm[train_rows:])
    if validation is not None:
        if validation.schema.shape != schema.shape or validation.schema.classes != schema.classes:
            raise UsageError(
                f"the validation set holds {validation.schema.shape} with classes "
                f"{list(validation.schema.classes)}, unlike the listings' {schema.shape}, "
                f"{list(schema.classes)}"
            )
        x_eval, y_eval, private = validation.features, validation.labels, False
    else:
        x_eval, y_eval, private = features[hold_idx], labels[hold_idx], True
    return Split(
        x_train=to_model_input(features[train_idx], in_shape),
        y_train=torch.from_numpy(labels[train_idx]),
        owner=owner[train_idx],
        x_eval=to_model_input(x_eval, in_shape),
        y_eval=torch.from_numpy(np.asarray(y_eval)),
        eval_is_private=private,
        in_shape=in_shape,
        classes=schema.classes,
    )


def _release_epsilon(job: Job, private_eval: bool) -> float:
    metrics = job.evaluation.metrics_epsilon if (private_eval and job.evaluation.metrics) else 0.0
    appraisal = job.release.appraisal_epsilon if job.release.appraisal_values else 0.0
    return metrics + appraisal + job.release.attribution_epsilon


Keep = Callable[[dict[str, float]], list[int]]  # the consumer contract's hook: values → listing ids kept


@dataclass
class Outcome:
    bundle: ModelBundle
    steps: int
    steps_planned: int
    stopped_by_budget: bool
    epsilon_training: float  # of the final model's run(s), as the worst-charged listing saw it
    epsilon_per_listing: list[float]  # what each listing's budget is charged, training and releases
    metrics: dict[str, float]
    appraisal: AppraisalResult
    kept: list[bool]  # per listing: was its data in the final model
    info: dict[str, Any] = field(default_factory=dict)
    #: What the enclave keeps to attribute served predictions (only with attribution_epsilon > 0).
    attribution: Any = None

    @property
    def epsilon_spent(self) -> float:
        return max(self.epsilon_per_listing)


def _engine(job: Job, data: Split, summary: dict[str, Any], seed_offset: int) -> DPSGD:
    t = job.training
    return DPSGD(
        job.model,
        data.in_shape,
        clipping_norm=t.clipping_norm,
        noise_multiplier=float(summary["noise_multiplier"]),
        sample_rate=float(summary["sample_rate"]),
        steps=int(summary["steps"]),
        learning_rate=t.learning_rate,
        optimizer=t.optimizer,
        oblivious=t.oblivious,
        seed=t.seed + seed_offset,
        device="cpu",
    )


def _appraise(job: Job, data: Split, model: torch.nn.Module, parts: int) -> tuple[AppraisalResult, float]:
    """Influence values released with DP when the job asks for them (and brings a validation set).

    Also returns two standard deviations of the values' Laplace noise below zero, reported to the
    consumer as the level below which a value is clearly negative (flags come from `_screen`).
    """
    if not (job.release.appraisal_values and not data.eval_is_private):
        return RowShare().fit(model, _appraisal_data(job, data, parts)), 0.0
    from sterling.appraisal.release import NETWORK_ITERATIONS, NETWORK_TOL, PrivateInfluence
    from sterling.appraisal.solvers import ConjugateGradient

    # Half the appraisal ε releases these values, half the screening of labels (`_screen`).
    epsilon = job.release.appraisal_epsilon / 2
    # An MLP is valued over every parameter (CG on the validation loss's Gauss-Newton matrix): it
    # ranked providers better than its last layer, in well under a second. A CNN keeps the last
    # layer: on the demo's CNN the full release took minutes on this machine and did not rank a
    # fake provider lower, while the last layer caught a pixel-noise seller (docs/appraisal.md).
    # Logistic regression keeps its exact head solve either way.
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    appraiser = PrivateInfluence(
        clip=job.training.clipping_norm,
        epsilon=epsilon,
        cg=ConjugateGradient(tol=NETWORK_TOL, max_iter=NETWORK_ITERATIONS),
        head_only=convolutional,
    )
    result = appraiser.fit(model, _appraisal_data(job, data, parts))
    return result, -2 * math.sqrt(2) * appraiser.scale


def _screen(job: Job, data: Split, model: torch.nn.Module, parts: int) -> Screening | None:
    """The screening of each provider's labels, released with the other half of the appraisal ε."""
    if not (job.release.appraisal_values and not data.eval_is_private):
        return None
    screener = LabelAgreement(epsilon=job.release.appraisal_epsilon / 2)
    return screener.fit(model, _appraisal_data(job, data, parts))


def _appraisal_data(job: Job, data: Split, parts: int) -> AppraisalData:
    return AppraisalData(
        x=data.x_train,
        y=data.y_train,
        owner=data.owner,
        parts=parts,
        x_val=data.x_eval,
        y_val=data.y_eval,
        loss=job.model.loss,
    )


def train(
    job: Job,
    summary: dict[str, Any],
    datasets: Sequence[Dataset],
    *,
    listing_ids: Sequence[int],
    validation: Dataset | None = None,
    keep: Keep | None = None,
    progress: Progress | None = None,
    reserved_epsilon: float | None = None,
) -> Outcome:
    """Run the verified job. `summary` is `verify(...).summary` for this job and these listings.

    With appraisal and a consumer hook `keep`, providers the hook drops are left out of the final
    model when the job asks to retrain without them (and are then not paid for their data).
    """
    t = job.training
    data = split(job, datasets, validation)
    sigma, q, steps = float(summary["noise_multiplier"]), float(summary["sample_rate"]), int(summary["steps"])
    runs = int(summary.get("training_runs", 1))
    # Retraining appraises the first run's first `pilot` steps (all of them by default).
    pilot = int(summary.get("pilot_steps") or steps) if runs == 2 else steps
    release_eps = _release_epsilon(job, data.eval_is_private)
    reserved = reserved_epsilon if reserved_epsilon is not None else min(a.epsilon for a in job.listings)
    budget = reserved - release_eps  # for training, all runs together
    if budget <= 0:
        raise UsageError(f"releasing metrics and values costs ε {release_eps:g}, the whole reservation")
    parts = len(datasets)

    def pld(n: int) -> float:
        return accountant.pld_epsilon(accountant.DpSgdParams(sigma, q, n, t.delta)) if n else 0.0

    def start(offset: int) -> tuple[DPSGD, Checkpoints | None]:
        engine = _engine(job, data, summary, offset)
        # The verifier allows a choice of checkpoint only on the consumer's own validation set.
        picker = None
        if job.evaluation.checkpoint != "last" and not data.eval_is_private and len(data.y_eval):
            rule, per_epoch = job.evaluation.checkpoint, max(1, round(1 / q))
            picker = Checkpoints(data.x_eval, data.y_eval, job.model.loss, rule, per_epoch)
        return engine, picker

    def run(
        engine: DPSGD,
        picker: Checkpoints | None,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        limit: float,
        until: int | None,
        shown: Callable[[int], tuple[int, int]],
    ) -> Any:
        """Train `engine` on (x, y) up to step `until`; `shown(step)` is (done, planned) for progress."""

        def on_step(log: Any) -> None:
            if progress is not None:
                progress(*shown(log.step))
            if picker is not None:
                picker.seen(engine.model, log.step)

        return engine.fit(x, y, epsilon_limit=limit, delta=t.delta, on_step=on_step, until=until)

    # Progress counts the pilot and a second run while a second run may follow; a pilot that
    # continues into its own run's end counts that one run.
    both = pilot + steps if runs == 2 else steps
    engine, picker = start(0)
    first = run(
        engine,
        picker,
        data.x_train,
        data.y_train,
        # A retraining job keeps room for a whole second run; one run may use everything.
        limit=budget - pld(steps) if runs == 2 else budget,
        until=pilot,  # the whole run unless retraining pilots it
        shown=lambda n: (n, both),
    )
    # Appraisal looks at the best model so far (by the consumer's validation set, as released).
    looked_at = picker.best_copy(engine.model) if picker is not None else engine.model
    appraisal, flag_below = _appraise(job, data, looked_at, parts)
    screening = _screen(job, data, looked_at, parts)
    # Fake data is flagged by the label screen. The influence values are too noisy on a weak DP
    # model to flag anyone by themselves (measured: an honest provider's value fell below two
    # standard deviations of its noise in the demo's small market); the consumer's keep() sees them.
    flagged = list(screening.flagged()) if screening is not None else [False] * parts
    kept = [True] * parts
    if keep is not None and appraisal.method != "row_share":
        chosen = set(keep({str(lid): v for lid, v in zip(listing_ids, appraisal.per_provider, strict=True)}))
        kept = [lid in chosen for lid in listing_ids]
    if job.release.drop_flagged:
        kept = [k and not f for k, f in zip(kept, flagged, strict=True)]
    final, fitted, trained_steps = engine, first, first.steps
    if runs == 2 and not all(kept):
        rows = torch.from_numpy(np.isin(data.owner, [i for i, k in enumerate(kept) if k]))
        if not bool(rows.any()):
            raise UsageError("the consumer's contract dropped every provider: nothing left to train on")
        spent = pld(first.steps)
        final, picker = start(1)
        fitted = run(
            final,
            picker,
            data.x_train[rows],
            data.y_train[rows],
            limit=budget - spent,
            until=None,
            shown=lambda n: (first.steps + n, both),
        )
        trained_steps = first.steps + fitted.steps
        eps_per_listing = [spent + release_eps + (pld(fitted.steps) if k else 0.0) for k in kept]
    else:
        kept = [True] * parts  # the final model used every provider's data
        if first.steps < steps:
            # No one was dropped: the pilot goes on to its run's end; one run, one ε.
            fitted = run(
                engine,
                picker,
                data.x_train,
                data.y_train,
                limit=budget,
                until=None,
                shown=lambda n: (n, steps),
            )
            trained_steps = fitted.steps
        eps_per_listing = [pld(fitted.steps) + release_eps] * parts
    if picker is not None:
        picker.restore(final.model, fitted.steps)
    attribution = None
    if job.release.attribution_epsilon > 0:
        from sterling.appraisal import attribution as attr

        used = np.isin(data.owner, [i for i, k in enumerate(kept) if k])
        rows = torch.from_numpy(used)
        attribution = attr.build(
            final.model,
            x=data.x_train[rows],
            y=data.y_train[rows],
            owner=data.owner[used],
            parts=parts,
            loss=job.model.loss,
            clip=t.clipping_norm,
            epsilon=job.release.attribution_epsilon,
            delta=t.delta,
            x_val=None if data.eval_is_private else data.x_eval,
            y_val=None if data.eval_is_private else data.y_eval,
        )
    exact = metrics_of(
        final.model, data.x_eval, data.y_eval, loss=job.model.loss, wanted=job.evaluation.metrics
    )
    if data.eval_is_private:
        if job.evaluation.metrics_epsilon > 0 and len(data.y_eval) > 0:
            rng = np.random.default_rng(np.random.SeedSequence(entropy=None))
            metrics = private_metrics(
                exact, n=len(data.y_eval), epsilon=job.evaluation.metrics_epsilon, rng=rng
            )
        else:
            metrics = {}
    else:
        metrics = exact
    released_values = appraisal.method != "row_share"
    info = {
        "job_hash": "0x" + job.job_hash().hex(),
        "steps": fitted.steps,
        "steps_planned": steps,
        "training_runs": 1 if final is engine else 2,
        # Every step trained, the pilot's included: what the enclave's progress counted.
        "steps_run": trained_steps,
        "pilot_steps": pilot if runs == 2 else None,
        "stopped_by_budget": fitted.stopped_by_budget,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "delta": t.delta,
        "epsilon_spent": max(eps_per_listing),
        "epsilon_per_listing": {str(lid): e for lid, e in zip(listing_ids, eps_per_listing, strict=True)},
        "metrics": metrics,
        "metrics_private": data.eval_is_private,
        # The final run's validation curve and the epoch released (the consumer's data: no ε).
        "checkpoint": picker.to_json() if picker is not None else {"rule": "last"},
        "train_rows": len(data.y_train),
        "appraisal": {
            "method": appraisal.method,
            "values": {str(lid): v for lid, v in zip(listing_ids, appraisal.per_provider, strict=True)}
            if released_values
            else None,
            "flagged": [lid for lid, f in zip(listing_ids, flagged, strict=True) if f],
            "screening": None
            if screening is None
            else {
                **screening.to_json(),
                "values": {str(lid): v for lid, v in zip(listing_ids, screening.sums, strict=True)},
            },
            "kept": [lid for lid, k in zip(listing_ids, kept, strict=True) if k],
            "flag_threshold": flag_below if released_values else None,
        },
    }
    bundle = ModelBundle.from_module(
        final.model, graph=job.model, in_shape=data.in_shape, classes=data.classes, info=info
    )
    return Outcome(
        bundle=bundle,
        steps=fitted.steps,
        steps_planned=steps,
        stopped_by_budget=fitted.stopped_by_budget,
        epsilon_training=pld(fitted.steps),
        epsilon_per_listing=eps_per_listing,
        metrics=metrics,
        appraisal=appraisal,
        kept=kept,
        info=info,
        attribution=attribution,
    )
