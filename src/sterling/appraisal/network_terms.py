"""What the private release needs of a network, over every parameter.

Two pieces, both in float64 on a copy of the trained model:

- the direction v = (C_val + λI)⁻¹∇L_val by conjugate gradients on
  curvature-vector products of the consumer's validation loss (`FullTerms`:
  `torch.func`), C_val the Hessian (`Hessian`) or its Gauss–Newton part
  (`GaussNewton`: Jᵀ A J, positive semi-definite, so CG never meets
  negative curvature on a model DP-SGD left short of a minimum);
- per row, ‖∇ℓ_i‖ and ∇ℓ_iᵀv (`row_norms_and_dots`): from DP-SGD's own
  per-layer rules (`privacy.persample.norms_and_dots`, one forward and one
  backward pass per chunk, the norms DP-SGD clips by) where the model has
  them, else `vmap(grad)` per chunk.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from sterling.appraisal.terms import CHUNK, F64, FullTerms, loss_derivatives, per_example_loss
from sterling.errors import UsageError
from sterling.privacy import persample

Product = Callable[[torch.Tensor], torch.Tensor]


class Curvature(Protocol):
    """A rule giving u ↦ C u for the mean loss of some rows, C their Hessian or an approximation."""

    name: str

    def product(self, terms: FullTerms) -> Product: ...


class Hessian:
    """C = ∇²L: forward-over-reverse Hessian-vector products (`FullTerms.hvp`)."""

    name = "hessian"

    def product(self, terms: FullTerms) -> Product:
        return terms.hvp


class GaussNewton:
    """C = (1/n)·Σ_i J_iᵀ A_i J_i, J_i the logits' Jacobian, A_i the loss's curvature in the logits.

    Positive semi-definite everywhere. One product costs a forward-mode pass (J u) and one
    backward pass through the graph kept from the first call (Jᵀ w): about a third of a
    Hessian-vector product's time on the demo's CNN (measured, docs/appraisal.md).
    """

    name = "gauss_newton"

    def product(self, terms: FullTerms) -> Product:
        def logits(theta: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = functional_call(terms.model, terms._params(theta), (terms.x,))
            return out

        pulled = vjp(logits, terms.theta)
        z: torch.Tensor = pulled[0]
        pullback = pulled[1]
        _, _, curvature = loss_derivatives(z.detach(), terms.y, terms.loss)
        n = max(1, terms.n)

        def gv(u: torch.Tensor) -> torch.Tensor:
            ju = jvp(logits, (terms.theta,), (u,))[1].reshape(len(z), -1)
            w = torch.einsum("nkl,nl->nk", curvature, ju) / n
            out: torch.Tensor = pullback(w.reshape(z.shape))[0]
            return out.detach()

        return gv


def flat_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters in the order `FullTerms` flattens them; all must be trainable."""
    params = list(model.parameters())
    if not all(p.requires_grad for p in params):
        raise UsageError("the network release values every parameter: unfreeze the model's parameters")
    return params


def row_norms_and_dots(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, v: torch.Tensor, *, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖∇ℓ_i‖, ∇ℓ_iᵀv) for every row, in float64, v flat over every parameter."""
    net = copy.deepcopy(model).to(F64).eval()
    params = flat_parameters(net)
    sizes = [p.numel() for p in params]
    if sum(sizes) != v.numel():
        raise UsageError(f"the direction has {v.numel()} entries, the model {sum(sizes)} parameters")
    shares = [u.view(p.shape) for u, p in zip(torch.split(v.to(F64), sizes), params, strict=True)]
    if not persample.supported(net):
        return _vmap_norms_and_dots(net, x, y, loss, v, chunk)

    def loss_fn(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return per_example_loss(out, labels, loss)

    assert isinstance(net, nn.Sequential)
    norms, dots = [], []
    for i in range(0, len(x), chunk):
        nrm, dot = persample.norms_and_dots(
            net, x[i : i + chunk].to(F64), y[i : i + chunk], shares, loss_fn=loss_fn
        )
        norms.append(nrm)
        dots.append(dot)
    empty = torch.zeros(0, dtype=F64)
    return (torch.cat(norms), torch.cat(dots)) if norms else (empty, empty)


def _vmap_norms_and_dots(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, v: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same through `FullTerms.gradients` (vmap over grad), for layers DP-SGD has no rule for."""
    terms = FullTerms(model, x, y, loss)
    norms, dots = [], []
    for i in range(0, terms.n, chunk):
        g = terms.gradients(i, min(terms.n, i + chunk))
        norms.append(g.norm(dim=1))
        dots.append(g @ v.to(F64))
    empty = torch.zeros(0, dtype=F64)
    return (torch.cat(norms), torch.cat(dots)) if norms else (empty, empty)


def clipped_dots(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    v: torch.Tensor,
    *,
    clip: float,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """vᵀĝ_i with ĝ_i = ∇ℓ_i·min(1, C/‖∇ℓ_i‖), the per-example gradient clipped to norm C."""
    norms, dots = row_norms_and_dots(model, x, y, loss, v, chunk=chunk)
    return dots * torch.clamp(clip / norms.clamp_min(1e-300), max=1.0)


def direction(
    model: nn.Module,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss: str,
    *,
    damping: float,
    curvature: Curvature,
    solve: Callable[[Product, float, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """(C_val + λI)⁻¹∇L_val over every parameter, from the model and the consumer's rows only."""
    val = FullTerms(model, x_val, y_val, loss)
    return solve(curvature.product(val), damping, val.mean_gradient())
