"""Appraisal: how much each provider's data is worth to the consumer's model.

An appraiser is an object with its settings in `__init__` and a `fit(...)`
that returns an `AppraisalResult` with one value per provider (and, where
the method has them, per training example). The enclave calls it after
training; the values weight per-prediction fees and, where the consumer's
contract says so, payouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class AppraisalResult:
    method: str
    #: One value per provider, in the order of the job's listings.
    per_provider: tuple[float, ...]
    #: One value per training example, where the method computes them.
    per_example: np.ndarray | None = field(default=None, repr=False)

    def weights(self, scale: int = 10**6) -> list[int]:
        """Non-negative integer weights for splitting fees on chain (harmful data weighs nothing)."""
        pos = [max(0.0, v) for v in self.per_provider]
        total = sum(pos)
        if total <= 0:
            return [1] * len(pos)
        return [round(scale * v / total) for v in pos]


class Appraiser(Protocol):
    def fit(
        self, *, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, owner: np.ndarray, parts: int
    ) -> AppraisalResult: ...


class RowShare:
    """The plain utility score: each provider's share of the training rows.

    It reads only public counts, so it releases nothing about the data; it
    cannot tell useful data from noise.
    """

    def fit(
        self, *, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, owner: np.ndarray, parts: int
    ) -> AppraisalResult:
        counts = np.bincount(owner, minlength=parts).astype(float)
        return AppraisalResult("row_share", tuple(float(c / max(1.0, counts.sum())) for c in counts))
