"""Dataset assembly: from chosen listings, a job that satisfies all of them.

The consumer picks listings and a model family; `assemble_job` writes the consumer contract:
one ε for every listing (the least of every per-job cap and every remaining budget, so one
noise multiplier fits all), DP-SGD's noise multiplier calibrated to that ε with the accountant
(never overshooting it), the model from the family's template fitted to the listings' schema,
and a payment cap equal to the sum of the prices the chain quotes this consumer.

With the consumer's own validation set (`Validation`), the job evaluates on it instead of a
private holdout (exact accuracy and AUC, no ε), releases the epoch that scores best on it, and
asks for each provider's appraisal value (influence on that set, released with DP at a small ε
taken out of the same per-listing ε, so every cap and budget still holds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sterling.chain.marketplace import Marketplace
from sterling.data.dataset import Dataset, Schema
from sterling.errors import SterlingError, UsageError
from sterling.privacy import accountant
from sterling.privacy.graph import FAMILIES, input_shape, template
from sterling.privacy.job import Job
from sterling.privacy.verifier import ListingView, Report, verify
from sterling.sdk.consumer import listing_views
from sterling.storage.blobs import BlobStore

#: Shares of the common ε: training gets the rest, releasing the held-out metrics this much.
METRICS_SHARE = 0.1
HOLDOUT = 0.2
EPOCHS = 5
BATCH = 64
DELTA = 1e-5
#: With a validation set: the appraisal values' ε is this share of the training ε (both within
#: the listing's ε: training gets ε / (1 + share), the appraisal the rest).
APPRAISAL_SHARE = 0.1


class AssemblyError(UsageError):
    """The chosen listings cannot make one job; `field` names the request field at fault."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class Validation:
    """The consumer's own validation set, as stored: its URI and schema."""

    uri: str
    schema: Schema


def load_validation(store: BlobStore, uri: str) -> Validation:
    """The validation set at `uri` in `store` (the enclave reads it from there); AssemblyError if it
    is not there or not a dataset."""
    digest = uri.strip().rstrip("/").rsplit("/", 1)[-1]
    try:
        if len(digest) != 64 or uri.strip() != store.uri(bytes.fromhex(digest)):
            raise ValueError("not in this server's store")
        dataset = Dataset.from_bytes(store.get_bytes(digest), source="the validation set")
    except (SterlingError, ValueError, OSError) as exc:
        raise AssemblyError(
            f"validation_uri {uri!r} is not a validation set uploaded here ({exc}); upload it first",
            field="validation_uri",
        ) from None
    return Validation(uri, dataset.schema)


@dataclass(frozen=True)
class Assembled:
    job: Job
    report: Report

    def job_json(self) -> dict[str, Any]:
        return self.job.model_dump(mode="json")


def assemble_job(
    market: Marketplace,
    listing_ids: list[int],
    *,
    family: str,
    consumer: str | None = None,
    validation: Validation | None = None,
) -> Assembled:
    """A job over `listing_ids` training a `family` model that passes the verifier for `consumer`;
    with `validation`, evaluated on it and appraising each provider."""
    if family not in FAMILIES:
        raise AssemblyError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}", field="family")
    if not listing_ids:
        raise AssemblyError("choose at least one listing", field="listing_ids")
    if len(set(listing_ids)) != len(listing_ids):
        raise AssemblyError("each listing may be chosen once", field="listing_ids")
    views = listing_views(market, listing_ids)
    missing = [lid for lid in listing_ids if lid not in views]
    if missing:
        raise AssemblyError(f"no listing {', '.join(map(str, missing))}", field="listing_ids")
    chosen = [views[lid] for lid in listing_ids]
    _check_compatible(chosen, family)
    if validation is not None:
        from sterling.sdk.upload import schema_mismatch

        for v in chosen:
            problem = schema_mismatch(validation.schema, v.schema, listing_id=v.listing_id)
            if problem is not None:
                raise AssemblyError(problem, field="validation_uri")
    epsilon = min(min(v.max_epsilon_per_job, v.remaining_epsilon) for v in chosen)
    if epsilon <= 0:
        raise AssemblyError("the chosen listings have no ε left", field="listing_ids")
    epsilon = math.floor(epsilon * 10**6) / 10**6  # the chain counts micro-ε
    delta = min(DELTA, *(v.delta for v in chosen))
    schema = chosen[0].schema
    rows = sum(v.schema.rows for v in chosen)
    holdout = HOLDOUT if validation is None else 0.0
    train_rows = int(rows * (1 - holdout))
    if train_rows < 2:
        raise AssemblyError(
            f"the chosen listings hold only {rows} rows, too few to train on", field="listing_ids"
        )
    batch = min(BATCH, max(1, train_rows // 4))
    q = batch / train_rows
    steps = max(1, math.ceil(EPOCHS / q))
    if validation is None:
        release_epsilon = round(epsilon * METRICS_SHARE, 6)
        evaluation: dict[str, Any] = {
            "holdout_fraction": HOLDOUT,
            "metrics": ["accuracy"],
            "metrics_epsilon": release_epsilon,
        }
        release: dict[str, Any] = {}
    else:
        # Rounded up to the micro-ε, so training's share (the rest) stays within the listing's ε.
        release_epsilon = math.ceil(epsilon * APPRAISAL_SHARE / (1 + APPRAISAL_SHARE) * 10**6) / 10**6
        evaluation = {
            "holdout_fraction": 0.0,
            "validation_uri": validation.uri,
            "metrics": ["accuracy", "auc"],
            "metrics_epsilon": 0.0,
            "checkpoint": "best_accuracy",
        }
        release = {"appraisal_values": True, "appraisal_epsilon": release_epsilon}
    sigma = accountant.calibrate_noise(
        target_epsilon=epsilon - release_epsilon, sample_rate=q, steps=steps, delta=delta
    )
    asks = {lid: epsilon for lid in listing_ids}
    quoted = listing_views(market, listing_ids, consumer=consumer, epsilons=asks)
    cap = sum(quoted[lid].price(epsilon) for lid in listing_ids)
    graph = template(family, classes=len(schema.classes))
    job = Job.parse(
        {
            "name": f"{family.replace('_', ' ')} on listings {', '.join(map(str, listing_ids))}",
            "purpose": "research",
            "listings": [{"listing_id": lid, "epsilon": epsilon} for lid in listing_ids],
            "model": graph.model_dump(mode="json"),
            "training": {
                "steps": steps,
                "expected_batch_size": batch,
                "noise_multiplier": sigma,  # exactly as calibrated: JSON keeps every digit
                "learning_rate": 0.5,
                "clipping_norm": 1.0,
                "optimizer": "momentum",
                "delta": delta,
            },
            "evaluation": evaluation,
            "release": release,
            "payment_cap_wei": cap,
        },
        source="assembled job",
    )
    return Assembled(job, verify(job, quoted))


def _check_compatible(chosen: list[ListingView], family: str) -> None:
    first = chosen[0]
    for v in chosen:
        if not v.open:
            raise AssemblyError(f"listing {v.listing_id} is not on sale", field="listing_ids")
    for v in chosen[1:]:
        a, b = first.schema, v.schema
        if (a.modality, a.shape, a.classes) != (b.modality, b.shape, b.classes):
            raise AssemblyError(
                f"listing {v.listing_id} holds {b.modality} {list(b.shape)} with classes {list(b.classes)}, "
                f"unlike listing {first.listing_id} ({a.modality} {list(a.shape)}, {list(a.classes)}): "
                "a job trains one model on one schema",
                field="listing_ids",
            )
    for v in chosen:
        if v.allowed_families is not None and family not in v.allowed_families:
            raise AssemblyError(
                f"listing {v.listing_id} allows only {', '.join(v.allowed_families)}, not {family}",
                field="family",
            )
    shape = input_shape(first.schema.shape, first.schema.modality)
    if family == "cnn" and (len(shape) != 3 or min(shape[1:]) < 4):
        raise AssemblyError(
            f"a cnn needs images of at least 4×4; listing {first.listing_id} holds "
            f"{first.schema.modality} {list(first.schema.shape)}",
            field="family",
        )


def template_job(
    family: str,
    *,
    listing_ids: list[int],
    epsilon: float = 1.0,
    classes: int = 2,
    payment_cap_wei: int = 10**18,
) -> Job:
    """A job to start from, as `sterling job template` prints it: the family's model, DP-SGD aiming at
    90% of `epsilon` and the held-out accuracy released with the other 10%."""
    if family not in FAMILIES:
        raise AssemblyError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}", field="family")
    return Job.parse(
        {
            "listings": [{"listing_id": lid, "epsilon": epsilon} for lid in listing_ids],
            "model": template(family, classes=classes).model_dump(mode="json"),
            "training": {
                "epochs": 5,
                "expected_batch_size": 64,
                "target_epsilon": epsilon * 0.9,
                "learning_rate": 0.5,
                "clipping_norm": 1.0,
            },
            "evaluation": {
                "holdout_fraction": 0.2,
                "metrics": ["accuracy"],
                "metrics_epsilon": epsilon * 0.1,
            },
            "payment_cap_wei": payment_cap_wei,
        },
        source="template",
    )
