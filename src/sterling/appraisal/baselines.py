"""Baselines that influence is measured against: training loss, self-influence, KNN-Shapley.

Each is an appraiser with Sterling's sign convention (high value: helpful,
low value: harmful), with per-example values and per-provider sums, so a
benchmark can flag the lowest-valued rows of every method the same way.
None of them is DP; their values never leave the enclave.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from sterling.appraisal import AppraisalData, AppraisalResult, provider_sums
from sterling.appraisal.influence import CHUNK, F64, ExactInfluence, Influence, per_example_loss
from sterling.errors import UsageError

Embedding = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _result(name: str, values: np.ndarray, data: AppraisalData) -> AppraisalResult:
    return AppraisalResult(name, provider_sums(values, data.owner, data.parts), values, epsilon=None)


class TrainingLoss:
    """value_i = −ℓ_i(θ): rows the trained model fits worst look harmful (mislabelled rows often do)."""

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                dtype = next(model.parameters()).dtype
                losses = [
                    per_example_loss(
                        model(data.x[i : i + CHUNK].to(dtype)).to(F64), data.y[i : i + CHUNK], data.loss
                    )
                    for i in range(0, len(data.x), CHUNK)
                ]
        finally:
            model.train(was)
        values = -torch.cat(losses).numpy() if losses else np.zeros(0)
        return _result("training_loss", values, data)


class SelfInfluence:
    """value_i = −∇ℓ_iᵀ (H + λI)⁻¹ ∇ℓ_i: rows the model had to bend furthest to fit look harmful.

    The curvature comes from `influence` (by default `ExactInfluence`), solved for many rows at once.
    """

    def __init__(self, *, influence: Influence | None = None) -> None:
        self.influence = influence or ExactInfluence()

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        terms = self.influence.terms(model, data.x, data.y, data.loss)
        lam = self.influence.lam(terms)
        out = []
        for i in range(0, terms.n, CHUNK):
            g = terms.gradients(i, min(terms.n, i + CHUNK))  # (m, P)
            out.append((g * self.influence.solve(terms, g.T, lam).T).sum(dim=1))
        values = -torch.cat(out).numpy() / max(1, terms.n) if out else np.zeros(0)
        return _result("self_influence", values, data)


def flat_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's inputs, one row per example: KNN-Shapley's default embedding."""
    return x.reshape(len(x), -1).to(F64)


class KnnShapley:
    """Exact Shapley values of a K-nearest-neighbour classifier's validation accuracy (Jia et al. 2019).

    For each validation point, sort the training rows by distance α_1..α_N and
    (Theorem 1) s_{α_N} = 1[y_{α_N} = y]/N,
    s_{α_i} = s_{α_{i+1}} + (1[y_{α_i} = y] − 1[y_{α_{i+1}} = y])/K · min(K, i)/i;
    a row's value is the mean over validation points. `embedding` gives the
    space distances are measured in: the inputs (default) or, say,
    `influence.penultimate` for a network's learnt features.
    """

    def __init__(self, *, k: int = 10, embedding: Embedding = flat_inputs) -> None:
        if k < 1:
            raise UsageError("KNN-Shapley needs k ≥ 1")
        self.k = k
        self.embedding = embedding

    def values(
        self, train: torch.Tensor, y: torch.Tensor, val: torch.Tensor, y_val: torch.Tensor
    ) -> np.ndarray:
        """Per-training-row values from embeddings `train` (N, D) and `val` (V, D)."""
        n = len(train)
        if n == 0 or len(val) == 0:
            return np.zeros(n)
        i = torch.arange(1, n, dtype=F64)  # 1..N-1
        coef = torch.clamp(i, max=self.k) / (self.k * i)
        total = torch.zeros(n, dtype=F64)
        for start in range(0, len(val), 256):
            v, yv = val[start : start + 256], y_val[start : start + 256]
            order = torch.argsort(torch.cdist(v, train), dim=1, stable=True)  # (m, N), nearest first
            match = (y[order] == yv[:, None]).to(F64)
            steps = (match[:, :-1] - match[:, 1:]) * coef  # (m, N-1)
            tail = torch.flip(torch.cumsum(torch.flip(steps, [1]), 1), [1])
            s = match[:, -1:] / n + torch.cat([tail, torch.zeros(len(v), 1, dtype=F64)], dim=1)
            total.scatter_add_(0, order.reshape(-1), s.reshape(-1))
        return (total / len(val)).numpy()

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        train = self.embedding(model, data.x).to(F64)
        val = self.embedding(model, data.x_val).to(F64)
        return _result("knn_shapley", self.values(train, data.y, val, data.y_val), data)
