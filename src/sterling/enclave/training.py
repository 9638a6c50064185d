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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sterling.appraisal import AppraisalResult, Appraiser, RowShare
from sterling.data.dataset import Dataset
from sterling.errors import UsageError
from sterling.privacy import accountant
from sterling.privacy.bundle import ModelBundle
from sterling.privacy.dpsgd import DPSGD
from sterling.privacy.features import to_model_input
from sterling.privacy.graph import input_shape
from sterling.privacy.job import Job

#: Per-example losses are clipped here before a private mean is released, bounding its sensitivity.
LOSS_CLIP = 10.0

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
    return metrics + appraisal


def metrics_of(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str, wanted: Sequence[str]
) -> dict[str, float]:
    """Accuracy, mean (clipped) loss and AUC of `model` on (x, y), without noise."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    with torch.no_grad():
        logits = model(x)
        if loss == "logistic":
            p1 = torch.sigmoid(logits.squeeze(-1))
            probs = torch.stack([1 - p1, p1], dim=1)
            per = torch.nn.functional.binary_cross_entropy_with_logits(
                logits.squeeze(-1), y.float(), reduction="none"
            )
        else:
            probs = torch.softmax(logits, dim=-1)
            per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    out: dict[str, float] = {}
    if "accuracy" in wanted:
        out["accuracy"] = float((probs.argmax(dim=1) == y).float().mean())
    if "loss" in wanted:
        out["loss"] = float(per.clamp(max=LOSS_CLIP).mean())
    if "auc" in wanted:
        present = np.unique(y.numpy())
        if len(present) < 2:
            out["auc"] = float("nan")
        elif probs.shape[1] == 2:
            out["auc"] = float(roc_auc_score(y.numpy(), probs[:, 1].numpy()))
        else:
            p = probs.numpy()[:, present]
            p = p / p.sum(axis=1, keepdims=True)
            out["auc"] = float(roc_auc_score(y.numpy(), p, multi_class="ovr", labels=present))
    return out


def private_metrics(
    exact: dict[str, float], *, n: int, epsilon: float, rng: np.random.Generator
) -> dict[str, float]:
    """Laplace mechanism on each metric of n private rows, ε split evenly among them.

    Changing one row moves accuracy by at most 1/n and the clipped mean loss
    by at most LOSS_CLIP/n (n, the held-out count, follows from the public row
    counts). AUC has no such bound, so the verifier refuses it on private rows.
    """
    sensitivity = {"accuracy": 1.0 / n, "loss": LOSS_CLIP / n}
    share = epsilon / max(1, len(exact))
    out = {}
    for name, value in exact.items():
        noisy = value + rng.laplace(0.0, sensitivity[name] / share)
        out[name] = float(np.clip(noisy, 0.0, 1.0 if name == "accuracy" else LOSS_CLIP))
    return out


@dataclass
class Outcome:
    bundle: ModelBundle
    steps: int
    steps_planned: int
    stopped_by_budget: bool
    epsilon_training: float
    epsilon_spent: float  # training plus what releasing metrics and values cost
    metrics: dict[str, float]
    appraisal: AppraisalResult
    info: dict[str, Any] = field(default_factory=dict)


def train(
    job: Job,
    summary: dict[str, Any],
    datasets: Sequence[Dataset],
    *,
    validation: Dataset | None = None,
    appraiser: Appraiser | None = None,
    progress: Progress | None = None,
    reserved_epsilon: float | None = None,
) -> Outcome:
    """Run the verified job. `summary` is `verify(...).summary` for this job and these listings."""
    t = job.training
    data = split(job, datasets, validation)
    sigma, q, steps = float(summary["noise_multiplier"]), float(summary["sample_rate"]), int(summary["steps"])
    release_eps = _release_epsilon(job, data.eval_is_private)
    reserved = reserved_epsilon if reserved_epsilon is not None else min(a.epsilon for a in job.listings)
    training_limit = reserved - release_eps
    if training_limit <= 0:
        raise UsageError(f"releasing metrics and values costs ε {release_eps:g}, the whole reservation")
    engine = DPSGD(
        job.model,
        data.in_shape,
        clipping_norm=t.clipping_norm,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        learning_rate=t.learning_rate,
        optimizer=t.optimizer,
        oblivious=t.oblivious,
        seed=t.seed,
        device="cpu",
    )

    def on_step(log: Any) -> None:
        if progress is not None:
            progress(log.step, steps)

    result = engine.fit(
        data.x_train, data.y_train, epsilon_limit=training_limit, delta=t.delta, on_step=on_step
    )
    eps_training = (
        accountant.pld_epsilon(accountant.DpSgdParams(sigma, q, result.steps, t.delta))
        if result.steps
        else 0.0
    )
    exact = metrics_of(
        engine.model, data.x_eval, data.y_eval, loss=job.model.loss, wanted=job.evaluation.metrics
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
    appraisal = (appraiser or RowShare()).fit(
        model=engine.model, x=data.x_train, y=data.y_train, owner=data.owner, parts=len(datasets)
    )
    spent = eps_training + release_eps
    info = {
        "job_hash": "0x" + job.job_hash().hex(),
        "steps": result.steps,
        "steps_planned": steps,
        "stopped_by_budget": result.stopped_by_budget,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "delta": t.delta,
        "epsilon_training": eps_training,
        "epsilon_spent": spent,
        "metrics": metrics,
        "metrics_private": data.eval_is_private,
        "train_rows": len(data.y_train),
    }
    bundle = ModelBundle.from_module(
        engine.model, graph=job.model, in_shape=data.in_shape, classes=data.classes, info=info
    )
    return Outcome(
        bundle=bundle,
        steps=result.steps,
        steps_planned=steps,
        stopped_by_budget=result.stopped_by_budget,
        epsilon_training=eps_training,
        epsilon_spent=spent,
        metrics=metrics,
        appraisal=appraisal,
        info=info,
    )
