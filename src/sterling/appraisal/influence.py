"""Influence functions (Koh & Liang 2017): the value of each training row without retraining.

For a model trained to θ on N rows, removing row i moves the parameters by
about (1/N)·H⁻¹∇ℓ_i(θ), H the Hessian of the mean training loss (plus the
damping λ, which plays the role of an L2 regulariser: with a training
objective Σ_i ℓ_i + (α/2)‖θ‖², λ = α/N makes the formula exact to first
order). The consumer's validation loss then rises by about

    value_i = (1/N) · ∇L_val(θ)ᵀ (H + λI)⁻¹ ∇ℓ_i(θ),

positive for rows that help the consumer, negative for harmful ones. A
provider's value is the sum over its rows (the first-order effect of
removing them together). All of it is computed in float64 on the trained
model; nothing retrains.

Two ways to get the terms, one interface (`Terms`):

- `HeadTerms`: closed form for the model's last linear layer on the
  features that feed it (for logistic regression, that is every parameter).
  ∇ℓ_i = r_i ⊗ φ_i and ∇²ℓ_i = A_i ⊗ φ_iφ_iᵀ, with r_i and A_i the loss's
  first and second derivatives in the logits, so no per-example gradient
  is ever materialised to score rows.
- `FullTerms`: every parameter, through `torch.func` (directional
  derivatives for the scores, forward-over-reverse Hessian-vector products).

and three appraisers: `ExactInfluence` (full Hessian, solved directly),
`LastLayerInfluence` (the head's exact Hessian; what Sterling uses for
networks, see docs/appraisal.md for the measurement) and
`ConjugateGradientInfluence` (every parameter, H⁻¹ by conjugate gradients).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from sterling.appraisal import AppraisalData, AppraisalResult, provider_sums
from sterling.errors import UsageError

F64 = torch.float64
#: Rows per chunk wherever a per-row tensor would otherwise grow with N × parameters.
CHUNK = 512


# ---------------------------------------------------------------- the model


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """The model as (body, last linear layer): everything after that layer must be a no-op in eval mode."""
    if not isinstance(model, nn.Sequential):
        raise UsageError("influence needs an nn.Sequential ending in a linear layer")
    layers = list(model)
    last = max((i for i, m in enumerate(layers) if isinstance(m, nn.Linear)), default=None)
    if last is None or not all(isinstance(m, nn.Dropout | nn.Identity) for m in layers[last + 1 :]):
        raise UsageError("influence needs the model's last layer (bar dropout) to be linear")
    head = layers[last]
    assert isinstance(head, nn.Linear)
    return nn.Sequential(*layers[:last]), head


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the model's last linear layer reads, as (N, D) float64."""
    body, head = split_head(model)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = []
            for i in range(0, len(x), 4 * CHUNK):
                out.append(body(x[i : i + 4 * CHUNK].to(head.weight.dtype)).reshape(-1, head.in_features))
            return torch.cat(out).to(F64) if out else torch.zeros(0, head.in_features, dtype=F64)
    finally:
        model.train(was)


def loss_derivatives(
    logits: torch.Tensor, y: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss, ∂ℓ/∂z (n, K) and ∂²ℓ/∂z² (n, K, K) in the logits z."""
    if loss == "logistic":
        z = logits.reshape(-1)
        t = y.to(z.dtype)
        p = torch.sigmoid(z)
        value = nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none")
        return value, (p - t)[:, None], (p * (1 - p))[:, None, None]
    if loss == "softmax_cross_entropy":
        p = torch.softmax(logits, dim=1)
        value = nn.functional.cross_entropy(logits, y, reduction="none")
        onehot = nn.functional.one_hot(y, logits.shape[1]).to(p.dtype)
        return value, p - onehot, torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    raise UsageError(f"unknown loss {loss!r}; one of softmax_cross_entropy, logistic")


def per_example_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "logistic":
        return nn.functional.binary_cross_entropy_with_logits(
            logits.reshape(-1), y.to(logits.dtype), reduction="none"
        )
    return nn.functional.cross_entropy(logits, y, reduction="none")


# ---------------------------------------------------------------- the terms


class Terms(Protocol):
    """A model linearised on one dataset: per-example gradients g_i and the mean loss's Hessian."""

    @property
    def n(self) -> int: ...
    @property
    def size(self) -> int: ...
    def mean_gradient(self) -> torch.Tensor: ...
    def dot(self, s: torch.Tensor) -> torch.Tensor: ...
    def hvp(self, v: torch.Tensor) -> torch.Tensor: ...
    def hessian(self) -> torch.Tensor: ...
    def gradients(self, start: int, stop: int) -> torch.Tensor: ...
    def mean_loss(self, delta: torch.Tensor | None = None) -> float: ...
    def subset(self, rows: torch.Tensor) -> Terms: ...


class HeadTerms:
    """Closed-form terms of the last linear layer (weights then bias, flattened row-major) on one dataset."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> None:
        _, head = split_head(model)
        phi = penultimate(model, x)
        w = head.weight.detach().to(F64)
        if head.bias is not None:
            w = torch.cat([w, head.bias.detach().to(F64)[:, None]], dim=1)
            phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=F64)], dim=1)
        self.phi = phi  # (n, D)
        self.w, self.y, self.loss = w, y, loss
        self.classes, self.width = w.shape  # K, D
        self.losses, self.residual, self.curvature = loss_derivatives(phi @ w.T, y, loss)
        self._hessian: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.phi)

    @property
    def size(self) -> int:
        return self.classes * self.width

    def mean_gradient(self) -> torch.Tensor:
        return (self.residual.T @ self.phi).reshape(-1) / max(1, self.n)

    def dot(self, s: torch.Tensor) -> torch.Tensor:
        """g_iᵀ s for every row: r_iᵀ S φ_i."""
        return ((self.phi @ s.view(self.classes, self.width).T) * self.residual).sum(dim=1)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        u = self.phi @ v.view(self.classes, self.width).T  # (n, K)
        w = torch.einsum("nkl,nl->nk", self.curvature, u)
        return (w.T @ self.phi).reshape(-1) / max(1, self.n)

    def hessian(self) -> torch.Tensor:
        """The mean loss's Hessian, computed once per object."""
        if self._hessian is None:
            self._hessian = self._dense()
        return self._hessian

    def _dense(self) -> torch.Tensor:
        k, d = self.classes, self.width
        h = torch.empty(k, d, k, d, dtype=F64)
        for a in range(k):
            for b in range(a, k):
                block = (self.phi * self.curvature[:, a, b, None]).T @ self.phi
                h[a, :, b, :] = block
                h[b, :, a, :] = block.T
        return h.reshape(k * d, k * d) / max(1, self.n)

    def gradients(self, start: int, stop: int) -> torch.Tensor:
        r, phi = self.residual[start:stop], self.phi[start:stop]
        return (r[:, :, None] * phi[:, None, :]).reshape(len(r), -1)

    def mean_loss(self, delta: torch.Tensor | None = None) -> float:
        """The mean loss with the layer's parameters moved by `delta`."""
        w = self.w if delta is None else self.w + delta.view(self.classes, self.width)
        return float(per_example_loss(self.phi @ w.T, self.y, self.loss).mean()) if self.n else 0.0

    def subset(self, rows: torch.Tensor) -> HeadTerms:
        """The same terms for some of the rows, without another forward pass."""
        out = copy.copy(self)
        out.phi, out.y = self.phi[rows], self.y[rows]
        out.losses, out.residual, out.curvature = self.losses[rows], self.residual[rows], self.curvature[rows]
        out._hessian = None
        return out

    def group_hessians(self, owner: torch.Tensor, parts: int) -> torch.Tensor:
        """(parts, P, P): each group's share (1/n)·Σ_{i∈p} ∇²ℓ_i of the mean Hessian, in one pass."""
        k, d = self.classes, self.width
        onehot = nn.functional.one_hot(owner, parts).to(F64)  # (n, parts)
        sums = torch.zeros(parts * k * k, d * d, dtype=F64)
        for i in range(0, self.n, CHUNK):
            phi = self.phi[i : i + CHUNK]
            outer = (phi[:, :, None] * phi[:, None, :]).reshape(len(phi), d * d)
            weights = onehot[i : i + CHUNK, :, None, None] * self.curvature[i : i + CHUNK, None]
            sums += weights.reshape(len(phi), -1).T @ outer
        h = sums.view(parts, k, k, d, d).permute(0, 1, 3, 2, 4)
        return h.reshape(parts, k * d, k * d) / max(1, self.n)

    def group_gradients(self, owner: torch.Tensor, parts: int) -> torch.Tensor:
        """(parts, P): (1/n)·Σ_{i∈p} ∇ℓ_i."""
        onehot = nn.functional.one_hot(owner, parts).to(F64)
        return torch.einsum("np,nk,na->pka", onehot, self.residual, self.phi).reshape(parts, -1) / max(
            1, self.n
        )

    def mean_losses(self, deltas: torch.Tensor) -> torch.Tensor:
        """(m,): the mean loss with the layer moved by each of `deltas` (m, P)."""
        w = self.w[None] + deltas.view(-1, self.classes, self.width)
        logits = torch.einsum("nd,mkd->mnk", self.phi, w)
        m = len(deltas)
        losses = per_example_loss(logits.reshape(m * self.n, -1), self.y.repeat(m), self.loss)
        return losses.view(m, self.n).mean(dim=1)

    def norms(self) -> torch.Tensor:
        """‖g_i‖ for every row: ‖r_i ⊗ φ_i‖ = ‖r_i‖·‖φ_i‖."""
        norms: torch.Tensor = self.residual.norm(dim=1) * self.phi.norm(dim=1)
        return norms


class FullTerms:
    """Terms over every parameter of the model, through `torch.func`, in float64."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> None:
        self.model = copy.deepcopy(model).to(F64).eval()
        named = [(k, v) for k, v in self.model.named_parameters() if v.requires_grad]
        self.names = [k for k, _ in named]
        self.shapes = [v.shape for _, v in named]
        self.sizes = [v.numel() for _, v in named]
        self.theta = torch.cat([v.detach().reshape(-1) for _, v in named]) if named else torch.zeros(0)
        self.x = x.to(F64)
        self.y = y
        self.loss = loss
        self._hessian: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def size(self) -> int:
        return int(self.theta.numel())

    def _params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, self.sizes)
        return {k: p.view(s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def _losses(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, self._params(theta), (x,))
        return per_example_loss(out, y, self.loss)

    def _mean(self, theta: torch.Tensor) -> torch.Tensor:
        return self._losses(theta, self.x, self.y).sum() / max(1, self.n)

    def mean_gradient(self) -> torch.Tensor:
        g: torch.Tensor = grad(self._mean)(self.theta)
        return g

    def dot(self, s: torch.Tensor) -> torch.Tensor:
        """g_iᵀ s for every row, as one directional derivative of the per-example losses."""
        out = []
        for i in range(0, self.n, CHUNK):
            x, y = self.x[i : i + CHUNK], self.y[i : i + CHUNK]
            out.append(jvp(lambda t, x=x, y=y: self._losses(t, x, y), (self.theta,), (s,))[1])
        return torch.cat(out) if out else torch.zeros(0, dtype=F64)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        hv: torch.Tensor = jvp(grad(self._mean), (self.theta,), (v,))[1]
        return hv

    def hessian(self) -> torch.Tensor:
        """The mean loss's Hessian, one block of Hessian-vector products at a time; computed once."""
        if self._hessian is None:
            eye = torch.eye(self.size, dtype=F64)
            h = torch.cat([vmap(self.hvp)(eye[i : i + 64]) for i in range(0, self.size, 64)])
            self._hessian = (h + h.T) / 2
        return self._hessian

    def gradients(self, start: int, stop: int) -> torch.Tensor:
        def one(t: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self._losses(t, xi[None], yi[None]).sum()

        g: torch.Tensor = vmap(grad(one), in_dims=(None, 0, 0))(
            self.theta, self.x[start:stop], self.y[start:stop]
        )
        return g

    def subset(self, rows: torch.Tensor) -> FullTerms:
        out = copy.copy(self)
        out.x, out.y, out._hessian = self.x[rows], self.y[rows], None
        return out

    def mean_loss(self, delta: torch.Tensor | None = None) -> float:
        theta = self.theta if delta is None else self.theta + delta
        with torch.no_grad():
            return float(self._mean(theta))


# ---------------------------------------------------------------- solvers


def solve_direct(h: torch.Tensor, damping: float, v: torch.Tensor) -> torch.Tensor:
    """(H + λI)⁻¹ v by Cholesky, or by LU where a non-convex H leaves H + λI indefinite."""
    a = h + damping * torch.eye(len(h), dtype=h.dtype)
    factor, info = torch.linalg.cholesky_ex(a)
    rhs = v if v.dim() == 2 else v[:, None]
    out = torch.cholesky_solve(rhs, factor) if int(info) == 0 else torch.linalg.solve(a, rhs)
    return out if v.dim() == 2 else out[:, 0]


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


# ---------------------------------------------------------------- appraisers


class Influence:
    """The shared algorithm: value_i = (1/N)·∇L_valᵀ (H + λI)⁻¹ ∇ℓ_i; subclasses choose terms and solver."""

    name = "influence"

    def __init__(self, *, damping: float = 0.01) -> None:
        if damping < 0:
            raise UsageError("damping must be ≥ 0")
        self.damping = damping

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> Terms:
        raise NotImplementedError

    def solve(self, terms: Terms, v: torch.Tensor) -> torch.Tensor:
        """(H + λI)⁻¹ v, v a vector or a (P, m) matrix."""
        return solve_direct(terms.hessian(), self.damping, v)

    def direct(self, terms: Terms) -> bool:
        """Does `solve` factor the Hessian (rather than iterate on Hessian-vector products)?"""
        return True

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        train = self.terms(model, data.x, data.y, data.loss)
        val = self.terms(model, data.x_val, data.y_val, data.loss)
        s = self.solve(train, val.mean_gradient())
        values = _check((train.dot(s) / max(1, train.n)).numpy())
        return AppraisalResult(self.name, provider_sums(values, data.owner, data.parts), values, epsilon=None)


class ExactInfluence(Influence):
    """Every parameter, the full Hessian solved directly: the reference, for models up to `max_params`.

    When only the last linear layer has parameters (logistic regression), it uses the closed form.
    """

    name = "exact_influence"

    def __init__(self, *, damping: float = 0.01, max_params: int = 4096) -> None:
        super().__init__(damping=damping)
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
    """The last linear layer's exact Hessian on the features the network computes (Sterling's choice).

    Solved directly up to `max_direct` head parameters, by conjugate gradients above.
    """

    name = "last_layer_influence"

    def __init__(self, *, damping: float = 0.01, max_direct: int = 4096, cg: ConjugateGradient | None = None):
        super().__init__(damping=damping)
        self.max_direct = max_direct
        self.cg = cg or ConjugateGradient()

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> Terms:
        return HeadTerms(model, x, y, loss)

    def direct(self, terms: Terms) -> bool:
        return terms.size <= self.max_direct

    def solve(self, terms: Terms, v: torch.Tensor) -> torch.Tensor:
        if self.direct(terms) or v.dim() == 2:
            return super().solve(terms, v)
        return self.cg.solve(terms.hvp, self.damping, v)


class ConjugateGradientInfluence(Influence):
    """Every parameter, H⁻¹∇L_val by conjugate gradients on Hessian-vector products."""

    name = "cg_influence"

    def __init__(self, *, damping: float = 0.01, cg: ConjugateGradient | None = None) -> None:
        super().__init__(damping=damping)
        self.cg = cg or ConjugateGradient()

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> Terms:
        return FullTerms(model, x, y, loss)

    def direct(self, terms: Terms) -> bool:
        return False

    def solve(self, terms: Terms, v: torch.Tensor) -> torch.Tensor:
        if v.dim() == 2:
            return torch.stack([self.cg.solve(terms.hvp, self.damping, c) for c in v.T], dim=1)
        return self.cg.solve(terms.hvp, self.damping, v)


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

    def mean_gradient(self) -> torch.Tensor:
        raise NotImplementedError

    def dot(self, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.full.hvp(v) - self.weight * self.part.hvp(v)

    def hessian(self) -> torch.Tensor:
        return self.full.hessian() - self.weight * self.part.hessian()

    def gradients(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def mean_loss(self, delta: torch.Tensor | None = None) -> float:
        raise NotImplementedError

    def subset(self, rows: torch.Tensor) -> Terms:
        raise NotImplementedError


class NewtonGroupInfluence:
    """Per-provider values from one Newton step without the provider's rows (Koh et al. 2019).

    For a whole provider the first-order sum of `Influence` misses how much the
    curvature changes when a tenth of the data goes. Here, with H_{-p} the
    Hessian of the objective without p's rows,

        Δθ_p = (H_{-p} + λI)⁻¹ (1/N) Σ_{i∈p} ∇ℓ_i,     value_p = L_val(θ + Δθ_p) − L_val(θ),

    the validation loss evaluated exactly at the stepped parameters (one
    forward pass, no retraining). One solve per provider, with `influence`'s
    terms and solver; per-example values are `influence`'s first-order ones.
    """

    def __init__(self, *, influence: Influence | None = None) -> None:
        self.influence = influence or ExactInfluence()

    @property
    def name(self) -> str:
        return "newton_" + self.influence.name

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        inner = self.influence
        train = inner.terms(model, data.x, data.y, data.loss)
        val = inner.terms(model, data.x_val, data.y_val, data.loss)
        s = inner.solve(train, val.mean_gradient())
        values = _check((train.dot(s) / max(1, train.n)).numpy())
        base = val.mean_loss()
        owner = np.asarray(data.owner)
        if isinstance(train, HeadTerms) and isinstance(val, HeadTerms) and inner.direct(train):
            steps = self._head_steps(train, torch.from_numpy(owner).long(), data.parts)
            per_provider = (val.mean_losses(steps) - base).tolist()
            return AppraisalResult(self.name, tuple(per_provider), values, epsilon=None)
        per_provider = []
        for p in range(data.parts):
            rows = torch.from_numpy(np.flatnonzero(owner == p))
            if len(rows) == 0:
                per_provider.append(0.0)
                continue
            part = train.subset(rows)
            step = inner.solve(_Without(train, part), part.mean_gradient() * part.n / max(1, train.n))
            per_provider.append(val.mean_loss(step) - base)
        return AppraisalResult(self.name, tuple(per_provider), values, epsilon=None)

    def _head_steps(self, train: HeadTerms, owner: torch.Tensor, parts: int) -> torch.Tensor:
        """Every provider's Newton step at once: one batched factorisation of (H − H_p + λI)."""
        size = train.size
        a = train.hessian()[None] - train.group_hessians(owner, parts)
        a = a + self.influence.damping * torch.eye(size, dtype=F64)[None]
        rhs = train.group_gradients(owner, parts)[:, :, None]
        factor, info = torch.linalg.cholesky_ex(a)
        ok = bool((info == 0).all())
        steps: torch.Tensor = torch.cholesky_solve(rhs, factor) if ok else torch.linalg.solve(a, rhs)
        return steps[:, :, 0]


def _check(values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise UsageError("influence values are not finite; raise the damping")
    return values
