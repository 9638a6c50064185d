"""Per-provider values from one Newton step without the provider's rows (Koh et al. 2019).

For a whole provider the first-order sum of `Influence` misses how much the
curvature changes when a tenth of the data goes. With H_{-p} the Hessian of
the objective without p's rows,

    Δθ_p = (H_{-p} + λI)⁻¹ (1/N) Σ_{i∈p} ∇ℓ_i

approximates the parameters retrained without p, from θ, by one Newton step.
`NewtonGroupInfluence` evaluates the consumer's validation target exactly at
θ + Δθ_p; `heldout.HeldOutFit` evaluates p's own rows there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sterling.appraisal import AppraisalData, AppraisalResult
from sterling.appraisal.first_order import ExactInfluence, Influence, check
from sterling.appraisal.solvers import Factored
from sterling.appraisal.targets import Target
from sterling.appraisal.terms import F64, HeadTerms, Score, Terms


class _Without:
    """The terms of a dataset less the rows of `part`: H − (n_S/N)·H_S, for the Newton step."""

    def __init__(self, full: Terms, part: Terms) -> None:
        self.full, self.part = full, part
        self.weight = part.n / max(1, full.n)

    @property
    def n(self) -> int:
        return self.full.n - self.part.n

    @property
    def size(self) -> int:
        return self.full.size

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.full.hvp(v) - self.weight * self.part.hvp(v)

    def hessian(self) -> torch.Tensor:
        return self.full.hessian() - self.weight * self.part.hessian()

    def trace(self) -> float:
        return self.full.trace() - self.weight * self.part.trace()

    def mean_gradient(self) -> torch.Tensor:
        raise NotImplementedError

    def dot(self, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gradients(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def mean_loss(self, delta: torch.Tensor | None = None) -> float:
        raise NotImplementedError

    def score_gradient(self, score: Score) -> torch.Tensor:
        raise NotImplementedError

    def mean_score(self, score: Score, delta: torch.Tensor | None = None) -> float:
        raise NotImplementedError

    def subset(self, rows: torch.Tensor) -> Terms:
        raise NotImplementedError


class GroupSteps:
    """Every provider's Newton step on one set of training terms, and the first-order values beside it.

    For a head solved directly, all at once: the group Hessians H_p in one batched product, H = Σ_p H_p,
    one Cholesky of H + λI for the first-order values and one batched Cholesky of H − H_p + λI for the
    steps. Elsewhere one `inner.solve` per provider on H − H_p.
    """

    def __init__(self, inner: Influence, train: Terms, owner: np.ndarray, parts: int) -> None:
        self.inner, self.train, self.parts = inner, train, parts
        self.owner = np.asarray(owner)
        self.lam = inner.lam(train)
        self.batched = isinstance(train, HeadTerms) and inner.direct(train)
        self._group_hessians: torch.Tensor | None = None
        self.factored: Factored | None = None
        if isinstance(train, HeadTerms) and self.batched:
            self._group_hessians = train.group_hessians(torch.from_numpy(self.owner).long(), parts)
            train._hessian = self._group_hessians.sum(dim=0)
            self.factored = Factored(train._hessian, self.lam)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """(H + λI)⁻¹ v, reusing the factorisation where there is one."""
        if self.factored is not None:
            return self.factored.solve(v)
        return self.inner.solve(self.train, v, self.lam)

    def first_order(self, gradient: torch.Tensor) -> np.ndarray:
        """Per-example first-order values for a validation gradient."""
        return check((self.train.dot(self.solve(gradient)) / max(1, self.train.n)).numpy())

    def steps(self) -> torch.Tensor:
        """(parts, P): Δθ_p for every provider (zero for one without rows)."""
        train = self.train
        if isinstance(train, HeadTerms) and self._group_hessians is not None:
            size = train.size
            a = train.hessian()[None] - self._group_hessians + self.lam * torch.eye(size, dtype=F64)[None]
            rhs = train.group_gradients(torch.from_numpy(self.owner).long(), self.parts)[:, :, None]
            factor, info = torch.linalg.cholesky_ex(a)
            ok = bool((info == 0).all())
            steps: torch.Tensor = torch.cholesky_solve(rhs, factor) if ok else torch.linalg.solve(a, rhs)
            return steps[:, :, 0]
        out = torch.zeros(self.parts, train.size, dtype=F64)
        for p in range(self.parts):
            rows = torch.from_numpy(np.flatnonzero(self.owner == p))
            if len(rows):
                part = train.subset(rows)
                rhs = part.mean_gradient() * part.n / max(1, train.n)
                out[p] = self.inner.solve(_Without(train, part), rhs, self.lam)
        return out


class NewtonGroupInfluence:
    """Per provider: the validation target evaluated exactly at θ + Δθ_p, less its value at θ.

    One solve per provider (batched for heads), with `influence`'s terms, solver, damping and target;
    per-example values are `influence`'s first-order ones.
    """

    def __init__(self, *, influence: Influence | None = None) -> None:
        self.influence = influence or ExactInfluence()

    @property
    def name(self) -> str:
        return "newton_" + self.influence.method

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        inner = self.influence
        train = inner.terms(model, data.x, data.y, data.loss)
        val = inner.terms(model, data.x_val, data.y_val, data.loss)
        groups = GroupSteps(inner, train, data.owner, data.parts)
        values = groups.first_order(inner.target_gradient(val))
        steps = groups.steps()
        target: Target = inner.target
        base = val.mean_score(target)
        if isinstance(val, HeadTerms):
            per_provider = (val.mean_scores(target, steps) - base).tolist()
        else:
            per_provider = [val.mean_score(target, step) - base if step.any() else 0.0 for step in steps]
        return AppraisalResult(self.name, tuple(per_provider), values, epsilon=None)
