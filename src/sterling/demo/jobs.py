"""The researcher's jobs in the demo: what they ask for, and what the demo records of each.

`job_body` is the job a hospital researcher writes (a DP CNN, then a DP
logistic regression, on the same listings); `JobRecord` is what the demo
learns of it on chain and from the model; `job_json` is its summary line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sterling.data.dataset import Schema
from sterling.privacy.graph import (
    Activation,
    Conv2d,
    Flatten,
    GroupNorm,
    Linear,
    ModelGraph,
    Pool,
    template,
)
from sterling.privacy.job import Job

DELTA = 1e-5


def demo_cnn(*, classes: int) -> ModelGraph:
    """The researcher's CNN: three convolutions of 8, 16 and 16 channels, each with group norm,
    ReLU and pooling, down to 3×3 before the linear head.

    Narrow on purpose. Under replace-one accounting the CNN needs σ ≈ 4 at ε 3, and DP-SGD's noise
    grows with the parameters it lands on: the 16-32-32 network of before (15,941 parameters)
    reached 0.589 on the synthetic test set (4 secret streams, lr 1.0) and sometimes collapsed in
    the small test market; this one (4,773 parameters) reached 0.619, never collapsed, and trains
    three times faster (docs/retinopathy-data.md).
    """
    block = (GroupNorm(groups=4), Activation(type="relu"), Pool(type="avgpool", kernel=2))
    return ModelGraph(
        layers=(
            Conv2d(out=8, kernel=3, padding=1),
            *block,
            Conv2d(out=16, kernel=3, padding=1),
            *block,
            Conv2d(out=16, kernel=3, padding=1),
            *block,
            Flatten(),
            Linear(out=classes),
        )
    )


@dataclass
class JobRecord:
    label: str
    model: str
    id: int | None = None
    listings: list[int] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    epsilon_per_run: float = 0.0
    epsilon_reserved: float = 0.0
    state: str = "not submitted"
    reason: str = ""
    escrow_wei: int = 0
    paid_wei: int = 0
    steps: int = 0
    epsilon_charged: dict[str, float] = field(default_factory=dict)
    dp: dict[str, float] = field(default_factory=dict)
    nonprivate: dict[str, float] = field(default_factory=dict)
    appraisal: dict[str, Any] = field(default_factory=dict)
    progress: list[tuple[int, float]] = field(default_factory=list)
    twin_curve: list[dict[str, float]] = field(default_factory=list)
    #: The DP model's accuracy on the researcher's validation set after each epoch (from the enclave).
    dp_curve: list[dict[str, float]] = field(default_factory=list)
    #: The privacy receipt, checked against the chain (`sterling privacy receipt`).
    receipt: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def job_body(
    family: str, ids: list[int], epsilon_per_run: float, validation_uri: str, pool: Schema, *, seed: int
) -> Job:
    """The researcher's job: `family` on listings `ids`, ε `epsilon_per_run` per training run."""
    classes = len(pool.classes)
    rows = pool.rows
    cnn = family == "cnn"
    # Most of the appraisal ε screens labels (the influence values only split the bonus). Under
    # replace-one accounting the screen's noise doubled; appraising the whole first run at 0.4·ε,
    # 0.8 of it screening, flagged the synthetic noise seller in 4 of 4 secret streams, where half
    # a run at 0.3·ε (the setting under add/remove) flagged it in 4 of 7 (docs/retinopathy-data.md).
    appraisal_eps = round((0.4 if cnn else 0.1) * epsilon_per_run, 6)
    # An upper bound: two whole runs. The verifier's own count (pilot and one run) is lower.
    reserved = round(2 * epsilon_per_run + appraisal_eps + 0.05, 4)
    return Job.parse(
        {
            "name": f"diabetic retinopathy grading ({family})",
            "purpose": "diabetic retinopathy screening research",
            "listings": [{"listing_id": lid, "epsilon": reserved} for lid in ids],
            "model": (demo_cnn(classes=classes) if cnn else template(family, classes=classes)).model_dump(
                mode="json"
            ),
            "training": {
                # 15 epochs keep the demo inside its time budget; at 20 the DP CNN scored no better
                # (0.617 against 0.614 on the synthetic data, seed 0, docs/retinopathy-data.md).
                "epochs": 15 if cnn else 10,
                "expected_batch_size": int(min(512, max(32, rows // 8))),
                "target_epsilon": epsilon_per_run,
                "learning_rate": 1.0 if cnn else 0.5,
                "optimizer": "momentum",
                "clipping_norm": 0.5,
                "delta": DELTA,
                "seed": seed,
            },
            "evaluation": {
                "holdout_fraction": 0.0,
                "validation_uri": validation_uri,
                "metrics": ["accuracy", "auc", "loss"],
                "metrics_epsilon": 0.0,
                # Release the epoch that scores best on the researcher's own validation set (free).
                "checkpoint": "best_accuracy",
            },
            "release": {
                "appraisal_values": True,
                "appraisal_epsilon": appraisal_eps,
                "screening_share": 0.8,
                "retrain_without_dropped": True,
                "drop_flagged": True,
                # The CNN appraises its whole first run and retrains only if someone is dropped (two
                # runs then, one otherwise): half a run's model was too weak, under replace-one noise,
                # to flag the noise seller reliably. The logistic regression pilots half its run.
                "pilot_fraction": 1.0 if cnn else 0.5,
            },
            # No keep() hook: on these small DP models the influence values are too noisy to drop
            # anyone by; the researcher drops what the enclave's label screen flags as fake instead.
            "contract": None,
            "payment_cap_wei": 10**19,
            "bonus_pool_wei": 2 * 10**16,
        }
    )


def job_json(j: JobRecord) -> dict[str, Any]:
    return {
        "id": j.id,
        "label": j.label,
        "model": j.model,
        "state": j.state,
        "reason": j.reason or None,
        "listings": j.listings,
        "excluded": j.excluded,
        "epsilon": j.epsilon_per_run,
        "epsilon_reserved": j.epsilon_reserved,
        "epsilon_charged": j.epsilon_charged,
        "accuracy": j.dp.get("accuracy"),
        "auc": j.dp.get("auc"),
        "nonprivate_accuracy": j.nonprivate.get("accuracy"),
        "nonprivate_auc": j.nonprivate.get("auc"),
        "steps": j.steps,
        "escrow_wei": j.escrow_wei,
        "paid_wei": j.paid_wei,
        "appraisal": j.appraisal,
        "progress": j.progress,
        "twin_curve": j.twin_curve,
        "dp_curve": j.dp_curve,
        "receipt": j.receipt,
        "seconds": j.seconds,
    }
