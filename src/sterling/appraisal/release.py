"""The DP release of per-provider influence values.

What may leave the enclave is one number per provider, released with the
Laplace mechanism. To give that number a sensitivity, the influence formula
is rearranged so that nothing but a provider's own rows, each bounded,
enters its value:

    v   = (H_val + λI)⁻¹ ∇L_val(θ) / ‖·‖   the direction: the DP-trained θ and the consumer's data only
    t_i = clip_[−c, c](vᵀ ĝ_i)              ĝ_i = ∇ℓ_i(θ) clipped to norm C, and c ≤ C
    V_p = Σ_{i ∈ p} t_i + noise             on an integer grid of c/2¹⁶, exact discrete Laplace

The term bound c: a row's term is a projection onto one direction and is
usually far smaller than C, so noise of scale C/ε would drown the signal
(measured: the noise seller was found in 16% of seeds at ε = 0.5). c is
therefore the `term_quantile` quantile of |vᵀ ĝ_j| over the consumer's own
validation rows, which say nothing about any provider's data; terms beyond
it are clipped.

Replacing one row of provider p moves V_p by at most 2c (a term goes from
−c to c) and leaves every other provider's value unchanged, so each release
is ε-DP for p's data (parallel composition across providers), composed with
the DP-SGD run that produced θ in the job's one accountant. The terms are
rounded to a grid and summed as integers, and the noise is discrete Laplace
of scale 2c/ε drawn exactly from the enclave's secret stream
(`sterling.privacy.noise`), so the guarantee holds for the numbers computed.
The Hessian comes from the consumer's validation set, not from training
rows, which would otherwise enter every provider's value through H⁻¹.

Which parameters: for logistic regression (only the last linear layer has
parameters) the closed form of `HeadTerms`, v by a direct solve. For
networks (MLP, CNN: `is_network`) every parameter (`network_terms`): v by
conjugate gradients on products with the validation loss's Gauss–Newton
matrix (`curvature`, positive semi-definite; `Hessian()` is the
alternative), at most `NETWORK_ITERATIONS` steps, and ‖∇ℓ_i‖ and ∇ℓ_iᵀv
for every row from DP-SGD's per-layer rules, so min(1, C/‖∇ℓ_i‖)·∇ℓ_iᵀv is
exactly vᵀĝ_i. The last layer alone was measured to rank an MLP's providers
close to chance (docs/appraisal.md); the network release's method string is
`cg_influence[gauss_newton]+laplace(...)`. Everything about privacy above
holds unchanged: v and c still come from θ and the consumer's rows only.
`head_only=True` keeps a network on its last layer: the enclave's choice for
CNNs, where the full release measured slower by minutes and no better at
finding a fake provider.

The positive direction matches influence: V_p > 0 means p's rows lower the
consumer's validation loss. V_p is in units of clipped gradient (it is not
divided by N), so only signs and ratios are comparable with `Influence`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sterling.appraisal import AppraisalData, AppraisalResult, provider_sums
from sterling.appraisal.network_terms import Curvature, GaussNewton, clipped_dots, direction
from sterling.appraisal.solvers import ConjugateGradient, solve_direct
from sterling.appraisal.terms import CHUNK, HeadTerms, split_head
from sterling.crypto.entropy import SecretRandom
from sterling.errors import UsageError
from sterling.privacy.mechanisms import values_release
from sterling.privacy.noise import Grid, discrete_laplace_sd, release_sums

#: Above this many last-layer parameters the direction is found by conjugate gradients.
MAX_DIRECT = 2048
#: CG's stopping rule for networks: the relative residual, and an iteration cap that keeps the
#: release within a few seconds on the demo's CNN (docs/appraisal.md has the measurement).
NETWORK_TOL = 1e-3
NETWORK_ITERATIONS = 10


def is_network(model: nn.Module) -> bool:
    """Does the model have trainable parameters before its last linear layer (MLP, CNN)?"""
    try:
        body, _ = split_head(model)
    except UsageError:
        return True
    return any(p.requires_grad for p in body.parameters())


class PrivateInfluence:
    """Per-provider influence released with exact discrete Laplace noise of scale 2c/ε (module docstring)."""

    def __init__(
        self,
        *,
        clip: float,
        epsilon: float,
        damping: float = 0.01,
        term_quantile: float | None = 0.95,
        rng: SecretRandom | None = None,
        curvature: Curvature | None = None,
        cg: ConjugateGradient | None = None,
        chunk: int = CHUNK,
        head_only: bool = False,
    ) -> None:
        if clip <= 0 or epsilon <= 0 or damping <= 0:
            raise UsageError("the private release needs clip > 0, epsilon > 0 and damping > 0")
        if term_quantile is not None and not 0 < term_quantile <= 1:
            raise UsageError(f"term_quantile must be in (0, 1], got {term_quantile}")
        self.clip = clip
        self.epsilon = epsilon
        #: What the plan calls this release; its ε and replace-one sensitivity.
        self.release = values_release(epsilon)
        self.damping = damping
        self.term_quantile = term_quantile
        self.rng = rng if rng is not None else SecretRandom.from_os()
        #: For networks: the validation loss's curvature and the solver of (C_val + λI)v = ∇L_val.
        self.curvature: Curvature = curvature or GaussNewton()
        self.cg = cg or ConjugateGradient(tol=NETWORK_TOL, max_iter=NETWORK_ITERATIONS)
        self.chunk = chunk
        #: Value a network's last linear layer alone (the release before issue 6), as for a head.
        self.head_only = head_only
        #: The bound c on one row's term (set by `noiseless`/`fit`; C until then).
        self.term_clip = clip
        #: Whether the last model appraised was a network (every parameter) or a head alone.
        self.network = False

    @property
    def grid(self) -> Grid:
        """Terms bounded to [−c, c], on 2¹⁶ steps per c."""
        return Grid(self.term_clip)

    @property
    def noise_sd(self) -> float:
        """The standard deviation of one released value's noise, in the values' units (≈ 2√2·c/ε)."""
        return discrete_laplace_sd(self.release.scale) * self.grid.step

    def _clipped(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, v: torch.Tensor
    ) -> torch.Tensor:
        """vᵀĝ_i for every row, ĝ_i the row's gradient clipped to norm C (before the term bound c)."""
        if self.network:
            return clipped_dots(model, x, y, loss, v, clip=self.clip, chunk=self.chunk)
        rows = HeadTerms(model, x, y, loss)
        return rows.dot(v) * torch.clamp(self.clip / rows.norms().clamp_min(1e-300), max=1.0)

    def _term_clip(self, model: nn.Module, data: AppraisalData, v: torch.Tensor) -> float:
        """c: a quantile of the validation rows' |terms| (the consumer's data only), at most C."""
        if self.term_quantile is None:
            return self.clip
        terms = self._clipped(model, data.x_val, data.y_val, data.loss, v).abs().numpy()
        c = float(np.quantile(terms, self.term_quantile)) if len(terms) else self.clip
        return min(self.clip, max(c, self.clip * 1e-6))

    @property
    def method(self) -> str:
        name = f"cg_influence[{self.curvature.name}]" if self.network else "influence"
        return f"{name}+discrete_laplace(c={self.term_clip:.3g},eps={self.epsilon:g})"

    def direction(self, model: nn.Module, data: AppraisalData) -> torch.Tensor:
        """v: the unit vector (H_val + λI)⁻¹∇L_val, from the model and the consumer's validation set only."""
        self.network = is_network(model) and not self.head_only
        if self.network:
            v = direction(
                model,
                data.x_val,
                data.y_val,
                data.loss,
                damping=self.damping,
                curvature=self.curvature,
                solve=self.cg.solve,
            )
        else:
            val = HeadTerms(model, data.x_val, data.y_val, data.loss)
            if val.size <= MAX_DIRECT:
                v = solve_direct(val.hessian(), self.damping, val.mean_gradient())
            else:
                # A logistic regression on 28×28×3 pixels has 11,765 parameters: its dense Hessian
                # takes 1.1 GB and ~25 s to factor (measured in the demo); CG on Hessian-vector
                # products, each two small products with the validation rows' features, well under 1 s.
                v = ConjugateGradient(tol=1e-6, max_iter=300).solve(
                    val.hvp, self.damping, val.mean_gradient()
                )
        norm = float(v.norm())
        return v / norm if norm > 0 else v

    def noiseless(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        """The values before noise, with the bounded per-example terms t_i: for tests; never released."""
        v = self.direction(model, data)
        self.term_clip = c = self._term_clip(model, data, v)
        terms = torch.clamp(self._clipped(model, data.x, data.y, data.loss, v), -c, c).numpy()
        return AppraisalResult(
            self.method + ":noiseless", provider_sums(terms, data.owner, data.parts), terms, epsilon=None
        )

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        """Each provider's sum of grid-rounded terms plus discrete Laplace noise, scaled back."""
        terms = self.noiseless(model, data).per_example
        assert terms is not None
        steps = self.grid.quantize(terms)
        sums = [int(steps[data.owner == p].sum()) for p in range(data.parts)]
        noisy = release_sums(self.rng, sums, epsilon=self.epsilon, sensitivity=self.release.sensitivity)
        released = tuple(self.grid.value(s) for s in noisy)
        return AppraisalResult(self.method, released, None, epsilon=self.epsilon)
