"""(H + λI)⁻¹ v, and the rules that choose λ.

The damping λ is a setting of every influence appraiser: a number, or a
`Damping` rule evaluated on the training terms at `fit` time.

- A number λ = α/N makes the formula that of the training objective
  Σ_i ℓ_i + (α/2)‖θ‖²: what estimates retraining (leave-one-out) effects.
- `MeanCurvature(offset=α/N)` adds the Hessian's mean eigenvalue tr(H)/P, a
  scale-free ridge (Levenberg–Marquardt's): directions of the parameter
  space with less than average curvature are shrunk towards the gradient
  itself instead of being amplified by H⁻¹. Sterling uses it to *screen
  rows*, where a validation set of a few hundred rows makes those directions
  mostly noise (docs/appraisal.md has the measurement).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from sterling.appraisal.terms import Terms
from sterling.errors import UsageError


class Damping(Protocol):
    def __call__(self, terms: Terms) -> float: ...


class MeanCurvature:
    """λ = offset + scale·tr(H)/P: the training objective's own L2 (`offset`) plus the mean curvature."""

    def __init__(self, *, offset: float = 0.0, scale: float = 1.0) -> None:
        if offset < 0 or scale <= 0:
            raise UsageError(f"MeanCurvature needs offset ≥ 0 and scale > 0, got {offset} and {scale}")
        self.offset = offset
        self.scale = scale

    def __call__(self, terms: Terms) -> float:
        return self.offset + self.scale * terms.trace() / max(1, terms.size)

    def __repr__(self) -> str:
        return f"MeanCurvature(offset={self.offset:g}, scale={self.scale:g})"


def resolve(damping: float | Damping, terms: Terms) -> float:
    """λ for these terms: the number itself, or the rule evaluated on them."""
    lam = float(damping) if isinstance(damping, int | float) else float(damping(terms))
    if not lam >= 0:
        raise UsageError(f"damping must be ≥ 0, got {lam}")
    return lam


def solve_direct(h: torch.Tensor, damping: float, v: torch.Tensor) -> torch.Tensor:
    """(H + λI)⁻¹ v by Cholesky, or by LU where a non-convex H leaves H + λI indefinite."""
    return Factored(h, damping).solve(v)


class Factored:
    """H + λI factored once (Cholesky, or LU where a non-convex H leaves it indefinite), solved many times."""

    def __init__(self, h: torch.Tensor, damping: float) -> None:
        self.matrix = h + damping * torch.eye(len(h), dtype=h.dtype)
        factor, info = torch.linalg.cholesky_ex(self.matrix)
        self.cholesky: torch.Tensor | None = factor if int(info) == 0 else None

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """(H + λI)⁻¹ v for a vector or the columns of a (P, m) matrix."""
        rhs = v if v.dim() == 2 else v[:, None]
        if self.cholesky is not None:
            out = torch.cholesky_solve(rhs, self.cholesky)
        else:
            out = torch.linalg.solve(self.matrix, rhs)
        return out if v.dim() == 2 else out[:, 0]

    def half_solve(self, v: torch.Tensor) -> torch.Tensor | None:
        """L⁻¹ v with H + λI = LLᵀ (so that (L⁻¹u)ᵀ(L⁻¹v) = uᵀ(H + λI)⁻¹v); None without a Cholesky."""
        if self.cholesky is None:
            return None
        half: torch.Tensor = torch.linalg.solve_triangular(self.cholesky, v, upper=False)
        return half


class ConjugateGradient:
    """(H + λI)⁻¹ v from Hessian-vector products alone; needs H + λI positive definite."""

    def __init__(self, *, tol: float = 1e-8, max_iter: int = 200) -> None:
        self.tol = tol
        self.max_iter = max_iter
        self.iterations = 0

    def solve(
        self, hvp: Callable[[torch.Tensor], torch.Tensor], damping: float, v: torch.Tensor
    ) -> torch.Tensor:
        x = torch.zeros_like(v)
        r = v.clone()
        p = r.clone()
        rr = float(r @ r)
        stop = self.tol**2 * max(rr, 1e-300)
        self.iterations = 0
        for _ in range(self.max_iter):
            if rr <= stop:
                break
            ap = hvp(p) + damping * p
            curv = float(p @ ap)
            if curv <= 0:  # negative curvature: H + λI is not PD along p; stop where we are
                break
            alpha = rr / curv
            x += alpha * p
            r -= alpha * ap
            rr_new = float(r @ r)
            p = r + (rr_new / rr) * p
            rr = rr_new
            self.iterations += 1
        return x
