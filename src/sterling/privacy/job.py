"""A job: what to train on which listings, with which privacy, at what price.

Jobs are typed, validated pydantic models with a canonical JSON encoding
(sorted keys, no whitespace), so `job_hash()` is stable across machines and
is what goes on chain.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sterling.errors import UsageError
from sterling.privacy.graph import ModelGraph


class _Strict(BaseModel):
    # No inf or NaN: JSON has neither, so a job holding one would not survive its own canonical
    # encoding (pydantic writes inf as null); found by fuzzing, like the bound on ε below.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: The most ε a job may reserve on one listing: far past any meaningful budget, and small enough
#: that micro-ε and the prices computed from it stay exact integers (1e308 overflowed them).
MAX_ASK_EPSILON = 1e6


class ListingAsk(_Strict):
    listing_id: int = Field(gt=0)
    epsilon: float = Field(gt=0, le=MAX_ASK_EPSILON, description="ε reserved on this listing's budget")


class Training(_Strict):
    epochs: float | None = Field(default=None, gt=0, le=1000)
    steps: int | None = Field(default=None, gt=0, le=1_000_000)
    expected_batch_size: int | None = Field(default=None, gt=0)
    sample_rate: float | None = Field(default=None, gt=0, le=1)
    learning_rate: float = Field(default=0.1, gt=0, le=100)
    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    clipping_norm: float = Field(default=1.0, gt=0)
    noise_multiplier: float | None = Field(default=None, gt=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    oblivious: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _one_of_each(self) -> Training:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs or steps")
        if (self.expected_batch_size is None) == (self.sample_rate is None):
            raise ValueError("give exactly one of expected_batch_size or sample_rate")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or target_epsilon")
        return self


class Evaluation(_Strict):
    holdout_fraction: float = Field(default=0.2, ge=0, lt=1)
    #: A validation set the consumer supplies (a sealed blob URI); metrics on it reveal nothing private.
    validation_uri: str | None = Field(default=None, max_length=256)
    metrics: tuple[Literal["accuracy", "auc", "loss"], ...] = ("accuracy",)
    #: ε spent releasing metrics measured on private held-out data (Laplace); 0 releases none.
    metrics_epsilon: float = Field(default=0.0, ge=0)
    #: Which of the DP-trained models to release: the last, or the one (checked after each epoch)
    #: with the best accuracy or loss on the consumer's own validation set. DP-SGD's guarantee
    #: covers every intermediate model, so choosing among them with the consumer's data costs no ε;
    #: choosing with private held-out rows would not be private, and the verifier refuses it.
    checkpoint: Literal["last", "best_accuracy", "best_loss"] = "last"


class Release(_Strict):
    model: bool = True
    #: Appraise each provider's data by influence on the consumer's validation set, releasing the
    #: values through the Laplace mechanism at `appraisal_epsilon` (charged to every listing).
    appraisal_values: bool = False
    appraisal_epsilon: float = Field(default=0.0, ge=0)
    #: Of `appraisal_epsilon`, the share that screens each provider's labels for fake data
    #: (appraisal/screening.py); the rest releases the influence values that split the bonus pool.
    screening_share: float = Field(default=0.5, gt=0, lt=1)
    #: When the consumer's contract drops providers after appraisal (`keep`), train the final model
    #: again without their data (so they are not paid for it); this trains twice, and the verifier
    #: counts both runs.
    retrain_without_dropped: bool = False
    #: With `retrain_without_dropped`, also leave out (and pay only their appraisal fee) the providers
    #: whom appraisal flags as fake: their labels agree with the DP model less than the consumer's own
    #: labels do (appraisal/screening.py).
    drop_flagged: bool = False
    #: With `retrain_without_dropped`, appraise on a pilot, the first `pilot_fraction` of the
    #: training steps, instead of on a whole first run. If appraisal drops no one, the same run
    #: goes on to its end (one run: its ε is that of all its steps); if it drops anyone, the final
    #: model trains afresh without them. The verifier counts the pilot's ε and one whole run.
    #: 1 appraises a whole first run.
    pilot_fraction: float = Field(default=1.0, gt=0, le=1)
    #: ε for serving predictions with per-prediction attribution (`sterling model predict`): each
    #: provider's summed last-layer gradients are kept in the enclave with Gaussian noise at this ε.
    #: 0 serves with the weights fixed at settlement instead.
    attribution_epsilon: float = Field(default=0.0, ge=0)


class Job(_Strict):
    version: Literal[1] = 1
    name: str = Field(default="", max_length=200)
    purpose: str = Field(default="", max_length=500)
    listings: tuple[ListingAsk, ...] = Field(min_length=1, max_length=32)
    model: ModelGraph
    training: Training
    evaluation: Evaluation = Evaluation()
    release: Release = Release()
    payment_cap_wei: int = Field(ge=0)
    #: Escrowed beyond the listings' prices and split among providers by positive appraised value.
    bonus_pool_wei: int = Field(default=0, ge=0)
    #: EIP-191 signatures by third parties (e.g. a hospital) over ``sterling:credential:<consumer address>``,
    #: which providers' contracts may ask for.
    credentials: tuple[str, ...] = Field(default=(), max_length=16)
    #: The consumer's own contract (sandboxed Python) with hooks the enclave calls, e.g. ``keep(values)``.
    contract: str | None = Field(default=None, max_length=64 * 1024)

    @field_validator("credentials")
    @classmethod
    def _signatures(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for sig in value:
            raw = sig.removeprefix("0x")
            if len(raw) != 130 or any(c not in "0123456789abcdefABCDEF" for c in raw):
                raise ValueError("a credential is a 65-byte signature in hex")
        return value

    @model_validator(mode="after")
    def _distinct_listings(self) -> Job:
        if self.evaluation.validation_uri is not None and self.evaluation.holdout_fraction > 0:
            raise ValueError("evaluate on either a private holdout or your own validation set, not both")
        if self.release.retrain_without_dropped and not self.release.appraisal_values:
            raise ValueError("retrain_without_dropped needs appraisal_values: dropping follows appraisal")
        if self.release.pilot_fraction < 1 and not self.release.retrain_without_dropped:
            raise ValueError(
                "release.pilot_fraction below 1 needs retrain_without_dropped: a pilot only appraises, "
                "the final model is trained after it"
            )
        ids = [a.listing_id for a in self.listings]
        if len(set(ids)) != len(ids):
            raise ValueError("each listing may appear once")
        return self

    def canonical(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    def job_hash(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    def public_view(self) -> dict[str, Any]:
        """What a provider's contract may read of the job: all but the consumer's contract and validation set.

        A provider contract's refusal reason goes on chain, so whatever it can read can be made
        public; the validation set is stored as is, so where it is must stay inside the enclave.
        """
        doc = self.model_dump(mode="json")
        doc.pop("contract", None)
        doc["evaluation"].pop("validation_uri", None)
        doc["model_family"] = self.model.family
        return doc

    @classmethod
    def parse(cls, doc: Any, *, source: str = "job") -> Job:
        """Validate a job document; every problem at once, each with its field path."""
        try:
            if isinstance(doc, str | bytes):
                return cls.model_validate_json(doc)
            return cls.model_validate(doc)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in err['loc']) or '(job)'}: {err['msg']}" for err in exc.errors()
            ]
            raise UsageError(f"{source}: " + "; ".join(problems)) from None
