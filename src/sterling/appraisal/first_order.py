"""First-order influence (Koh & Liang 2017): each training row's value without retraining.

For a model trained to θ on N rows, removing row i moves the parameters by
about (1/N)·H⁻¹∇ℓ_i(θ), H the Hessian of the mean training loss (plus the
damping λ, which plays the role of an L2 regulariser: with a training
objective Σ_i ℓ_i + (α/2)‖θ‖², λ = α/N makes the formula exact to first
order). The consumer's validation target (by default its loss) then rises by

    value_i = (1/N) · ∇T_val(θ)ᵀ (H + λI)⁻¹ ∇ℓ_i(θ),

positive for rows that help the consumer, negative for harmful ones. A
provider's value is the sum over its rows (the first-order effect of
removing them together).

Three appraisers, one algorithm (`Influence`): `ExactInfluence` (full
Hessian, solved directly), `LastLayerInfluence` (the head's exact Hessian
on the features the network computes) and `ConjugateGradientInfluence`
(every parameter, H⁻¹ by conjugate gradients).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sterling.appraisal import AppraisalData, AppraisalResult, provider_sums
from sterling.appraisal.solvers import ConjugateGradient, Damping, resolve, solve_direct
from sterling.appraisal.targets import Target, ValidationLoss
from sterling.appraisal.terms import FullTerms, HeadTerms, Terms, split_head
from sterling.errors import UsageError


class Influence:
    """value_i = (1/N)·∇T_valᵀ (H + λI)⁻¹ ∇ℓ_i; subclasses choose terms and solver.

    `damping` is λ, or a rule (`solvers.MeanCurvature`) evaluated on the training terms;
    `target` is what is measured on the validation set (`targets.ValidationLoss` by default).
    """

    name = "influence"

    def __init__(self, *, damping: float | Damping = 0.01, target: Target | None = None) -> None:
        if isinstance(damping, int | float) and damping < 0:
            raise UsageError("damping must be ≥ 0")
        self.damping = damping
        self.target: Target = target or ValidationLoss()

    @property
    def method(self) -> str:
        return self.name if isinstance(self.target, ValidationLoss) else f"{self.name}[{self.target.name}]"

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> Terms:
        raise NotImplementedError

    def lam(self, terms: Terms) -> float:
        """λ for these training terms."""
        return resolve(self.damping, terms)

    def solve(self, terms: Terms, v: torch.Tensor, lam: float) -> torch.Tensor:
        """(H + λI)⁻¹ v, v a vector or a (P, m) matrix."""
        return solve_direct(terms.hessian(), lam, v)

    def direct(self, terms: Terms) -> bool:
        """Does `solve` factor the Hessian (rather than iterate on Hessian-vector products)?"""
        return True

    def target_gradient(self, val: Terms) -> torch.Tensor:
        """∇T_val(θ): the closed form for the loss, autograd through the logits otherwise."""
        if isinstance(self.target, ValidationLoss):
            return val.mean_gradient()
        return val.score_gradient(self.target)

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        train = self.terms(model, data.x, data.y, data.loss)
        val = self.terms(model, data.x_val, data.y_val, data.loss)
        s = self.solve(train, self.target_gradient(val), self.lam(train))
        values = check((train.dot(s) / max(1, train.n)).numpy())
        return AppraisalResult(
            self.method, provider_sums(values, data.owner, data.parts), values, epsilon=None
        )


class ExactInfluence(Influence):
    """Every parameter, the full Hessian solved directly: the reference, for models up to `max_params`.

    When only the last linear layer has parameters (logistic regression), it uses the closed form.
    """

    name = "exact_influence"

    def __init__(
        self, *, damping: float | Damping = 0.01, target: Target | None = None, max_params: int = 4096
    ) -> None:
        super().__init__(damping=damping, target=target)
        self.max_params = max_params

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> Terms:
        body, _ = split_head(model)
        if not any(p.requires_grad for p in body.parameters()):
            return HeadTerms(model, x, y, loss)
        terms = FullTerms(model, x, y, loss)
        if terms.size > self.max_params:
            raise UsageError(
                f"the model has {terms.size} parameters, over max_params={self.max_params} for an exact "
                "Hessian; use LastLayerInfluence or ConjugateGradientInfluence"
            )
        return terms


class LastLayerInfluence(Influence):
    """The last linear layer's exact Hessian on the features the network computes.

    Solved directly up to `max_direct` head parameters, by conjugate gradients above.
    """

    name = "last_layer_influence"

    def __init__(
        self,
        *,
        damping: float | Damping = 0.01,
        target: Target | None = None,
        max_direct: int = 4096,
        cg: ConjugateGradient | None = None,
    ):
        super().__init__(damping=damping, target=target)
        self.max_direct = max_direct
        self.cg = cg or ConjugateGradient()

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> Terms:
        return HeadTerms(model, x, y, loss)

    def direct(self, terms: Terms) -> bool:
        return terms.size <= self.max_direct

    def solve(self, terms: Terms, v: torch.Tensor, lam: float) -> torch.Tensor:
        if self.direct(terms) or v.dim() == 2:
            return super().solve(terms, v, lam)
        return self.cg.solve(terms.hvp, lam, v)


class ConjugateGradientInfluence(Influence):
    """Every parameter, H⁻¹∇T_val by conjugate gradients on Hessian-vector products."""

    name = "cg_influence"

    def __init__(
        self,
        *,
        damping: float | Damping = 0.01,
        target: Target | None = None,
        cg: ConjugateGradient | None = None,
    ) -> None:
        super().__init__(damping=damping, target=target)
        self.cg = cg or ConjugateGradient()

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> Terms:
        return FullTerms(model, x, y, loss)

    def direct(self, terms: Terms) -> bool:
        return False

    def solve(self, terms: Terms, v: torch.Tensor, lam: float) -> torch.Tensor:
        if v.dim() == 2:
            return torch.stack([self.cg.solve(terms.hvp, lam, c) for c in v.T], dim=1)
        return self.cg.solve(terms.hvp, lam, v)


def check(values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise UsageError("influence values are not finite; raise the damping")
    return values
