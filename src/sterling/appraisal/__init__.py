"""Appraisal: how much each provider's data is worth to the consumer's model.

An appraiser is an object with its settings in `__init__` and a
`fit(model, data)` that returns an `AppraisalResult` with one value per
provider (and, where the method has them, per training example). The
enclave calls it after training, on the trained model; nothing retrains.

Sign convention, for every appraiser: a value is the predicted *increase*
in the consumer's validation loss if that data were removed. Positive data
helps the consumer's model; negative data harms it (noise, shuffled or
flipped labels) and is `flagged()`.

- `RowShare`: each provider's share of the rows (public counts only);
- `influence`: influence functions (Koh & Liang 2017), gathering `terms`,
  `solvers`, `targets`, `first_order`, `groups` (Newton step per provider)
  and `heldout` (each provider's labels under the model fitted without it);
- `baselines`: training loss, self-influence and KNN-Shapley, for comparison;
- `release`: the DP release of per-provider influence values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch

Loss = Literal["softmax_cross_entropy", "logistic"]


@dataclass(frozen=True)
class AppraisalData:
    """What an appraiser reads: the training rows with their owners, and the consumer's validation set."""

    #: Training inputs as the model takes them, (N, *in_shape), float32.
    x: torch.Tensor
    #: Training labels, int64.
    y: torch.Tensor
    #: (N,) index of the provider (0..parts-1) of each training row.
    owner: np.ndarray
    parts: int
    #: The consumer's validation set (their own data).
    x_val: torch.Tensor
    y_val: torch.Tensor
    #: "softmax_cross_entropy", or "logistic" (one output logit, binary cross-entropy).
    loss: str = "softmax_cross_entropy"


@dataclass(frozen=True)
class AppraisalResult:
    method: str
    #: One value per provider, in the order of the job's listings (positive: helpful).
    per_provider: tuple[float, ...]
    #: One value per training example, where the method computes them (never released).
    per_example: np.ndarray | None = field(default=None, repr=False)
    #: ε charged to each provider's budget for releasing `per_provider`; 0 for values computed from
    #: public counts only; None for values that are not DP and must not leave the enclave.
    epsilon: float | None = None

    def weights(self, scale: int = 10**6) -> list[int]:
        """Non-negative integer weights for splitting fees on chain (harmful data weighs nothing)."""
        pos = [max(0.0, v) for v in self.per_provider]
        total = sum(pos)
        if total <= 0:
            return [1] * len(pos)
        return [round(scale * v / total) for v in pos]

    def flagged(self, *, threshold: float = 0.0) -> tuple[bool, ...]:
        """Per provider: is its value below `threshold` (by default: harmful)?"""
        return tuple(v < threshold for v in self.per_provider)


class Appraiser(Protocol):
    def fit(self, model: torch.nn.Module, data: AppraisalData) -> AppraisalResult: ...


class RowShare:
    """The plain utility score: each provider's share of the training rows.

    It reads only public counts, so it releases nothing about the data; it
    cannot tell useful data from noise.
    """

    def fit(self, model: torch.nn.Module, data: AppraisalData) -> AppraisalResult:
        counts = np.bincount(np.asarray(data.owner), minlength=data.parts).astype(float)
        total = max(1.0, float(counts.sum()))
        return AppraisalResult("row_share", tuple(float(c / total) for c in counts), epsilon=0.0)


def provider_sums(per_example: np.ndarray, owner: np.ndarray, parts: int) -> tuple[float, ...]:
    """Group values: the sum of each provider's per-example values."""
    sums = np.bincount(np.asarray(owner), weights=np.asarray(per_example, dtype=np.float64), minlength=parts)
    return tuple(float(v) for v in sums)
