"""Serving a completed job's model from the enclave, with per-prediction fees.

At settlement the worker keeps its own copy of the model, and (when the job
paid for it with `attribution_epsilon`) the noisy per-provider gradient sums
that attribute predictions, sealed to the enclave. Anyone may then buy
predictions: the enclave predicts a batch, attributes it to the providers
whose data most influenced it, and signs the weights for that payer and that
batch; the payer's transaction splits the fee on chain by them
(`pay_for_attributed_predictions`). Without attribution the fee is split by
the weights recorded at settlement.

Here the enclave is a SIMULATION and `sterling model predict` runs it in the
calling process, with the worker's sealed keys; on hardware this would be a
request to the enclave.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sterling.appraisal.attribution import AttributionState, attribute, batch_weights
from sterling.chain import digests
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState
from sterling.enclave.tee import TeeBackend
from sterling.errors import EnclaveError, IntegrityError, NotFound, UsageError
from sterling.privacy.bundle import ModelBundle
from sterling.privacy.features import to_model_input

SERVING_LABEL = "sterling.serving.v1"
MAX_BATCH = 100_000


def serving_path(state_dir: Path, market: Marketplace, job_id: int) -> Path:
    return state_dir / "serving" / f"{market.chain.chain_id}-{market.address.lower()}-{job_id}.sealed"


def save(tee: TeeBackend, path: Path, bundle: ModelBundle, attribution: AttributionState | None) -> None:
    """Keep the enclave's copy of a job's model (and attribution state), sealed to the enclave."""
    buf = io.BytesIO()
    arrays: dict[str, np.ndarray] = {"bundle": np.frombuffer(bundle.to_bytes(), dtype=np.uint8)}
    if attribution is not None:
        arrays["attribution"] = np.frombuffer(attribution.to_bytes(), dtype=np.uint8)
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    tee.save_sealed(path, buf.getvalue(), label=SERVING_LABEL)


@dataclass(frozen=True)
class Served:
    job_id: int
    classes: tuple[str, ...]
    probabilities: np.ndarray
    attribution: np.ndarray | None  # (n, listings) shares per prediction
    weights: list[int]
    batch_hash: bytes
    signature: bytes | None  # the enclave's signature over the weights (attributed batches)
    enclave: str

    @property
    def predictions(self) -> list[str]:
        return [self.classes[i] for i in self.probabilities.argmax(axis=1)]

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "count": len(self.probabilities),
            "predictions": self.predictions,
            "probabilities": np.round(self.probabilities, 6).tolist(),
            "attributed": self.signature is not None,
            "weights": self.weights,
            "batch_hash": "0x" + self.batch_hash.hex(),
        }


class Server:
    """Predicts with a completed job's model and attributes the batch; signs with a worker's key."""

    def __init__(self, market: Marketplace, tee: TeeBackend, state_dir: Path, account: Any) -> None:
        self.market = market
        self.tee = tee
        self.state_dir = state_dir
        self.account = account

    def _load(self, job_id: int) -> tuple[ModelBundle, AttributionState | None]:
        path = serving_path(self.state_dir, self.market, job_id)
        if not path.exists():
            raise NotFound(f"this enclave holds no model for job {job_id} (it did not settle it here)")
        raw = self.tee.load_sealed(path, label=SERVING_LABEL)
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                bundle = ModelBundle.from_bytes(npz["bundle"].tobytes())
                state = (
                    AttributionState.from_bytes(npz["attribution"].tobytes())
                    if "attribution" in npz
                    else None
                )
        except (ValueError, OSError, KeyError) as exc:
            raise IntegrityError(f"the enclave's copy of job {job_id}'s model is damaged ({exc})") from None
        return bundle, state

    def predict(self, job_id: int, x: np.ndarray, *, payer: str) -> Served:
        job = self.market.job(job_id)
        if job.state is not JobState.COMPLETED:
            raise UsageError(f"job {job_id} is {job.state.label}: only a completed job's model is served")
        if not 0 < len(x) <= MAX_BATCH:
            raise UsageError(f"a batch holds 1 to {MAX_BATCH} inputs, got {len(x)}")
        bundle, state = self._load(job_id)
        try:
            inputs = to_model_input(x, bundle.in_shape)
        except UsageError as exc:
            raise UsageError(f"inputs do not fit job {job_id}'s model: {exc}") from None
        model = bundle.module()
        batch_hash = hashlib.sha256(os.urandom(16) + np.ascontiguousarray(x).tobytes()).digest()
        if state is None:
            probs = bundle.predict_proba(x)
            weights = [a.weight for a in job.allocations]
            return Served(
                job_id, bundle.classes, probs, None, weights, batch_hash, None, self.account.address
            )
        probs, shares = attribute(model, state, inputs, loss=bundle.graph.loss)
        weights = batch_weights(shares)
        digest = self.market.predictions_digest(
            job_id, payer=payer, count=len(x), batch_hash=batch_hash, weights=weights
        )
        signature = digests.sign_digest(self.account, digest)
        return Served(
            job_id, bundle.classes, probs, shares, weights, batch_hash, signature, self.account.address
        )

    def pay(self, served: Served, payer: Any, *, fee_wei: int) -> None:
        """The payer's transaction: split `fee_wei` among the job's providers by the batch's weights."""
        if fee_wei <= 0:
            raise UsageError("the fee must be > 0 wei")
        if served.signature is None:
            self.market.pay_for_predictions(
                payer, served.job_id, count=len(served.probabilities), value=fee_wei
            )
            return
        if not self.market.is_enclave(served.enclave):
            raise EnclaveError(f"{served.enclave} is not a registered enclave: register the worker first")
        self.market.pay_for_attributed_predictions(
            payer,
            served.job_id,
            count=len(served.probabilities),
            batch_hash=served.batch_hash,
            weights=served.weights,
            enclave=served.enclave,
            signature=served.signature,
            value=fee_wei,
        )
