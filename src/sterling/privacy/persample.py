"""Clipped sums of per-example gradients from one batched forward and backward pass.

For the layers a Sterling model can have parameters in (linear, conv2d,
group norm, layer norm), each example's gradient is a small product of the
layer's input activations and the gradient at its output, both of which one
ordinary forward and backward pass already computes. The forward pass keeps
each trainable layer's input and output; one backward pass gives the
gradient at every output; the per-example gradient norms and the clipped,
weighted sum then follow per layer, without running the model once per
example (`vmap`) and without the weight gradients autograd would sum.

Per layer, the cheaper of two exact rules (Bu et al. 2022, "mixed ghost
clipping"): either the per-example gradients themselves (kept to be summed
once the clipping factors are known), or only their norms ("ghost norm":
‖Σ_t g_t a_tᵀ‖² = Σ_{t,s} (a_t·a_s)(g_t·g_s) over the T output positions),
with the clipped sum afterwards as one ordinary weight-gradient call on
factor-scaled output gradients (book-keeping). Explicit costs about T·p·d per
example for a layer with p outputs and d inputs per position, the ghost norm
about 2T²(p + d): for linear layers on flat inputs T = 1 and the ghost rule
always wins; for convolutions on large images (the demo's CNN: T = 784 and
196) explicit wins by 20 to 60 times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.grad import conv2d_weight

TRAINABLE = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)

# oneDNN's convolution on channels-first inputs with few channels (the image itself) is slow here: a
# 3→16 channel 3×3 convolution on 256×3×28×28 took 19 ms (one thread) against 6 ms through
# channels-last (3 ms) and back to channels-first for group norm (2.7 ms; group norm itself is 10×
# slower on channels-last). Most of the 19 ms is fresh memory for its large scratch buffer (4 ms with
# glibc's MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ raised). With 8 or more channels the
# channels-first kernel is as fast.
FEW_CHANNELS = 4


def supported(model: nn.Module) -> bool:
    """Whether `clipped_sum` has a rule for every layer with parameters of this sequential model."""
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, TRAINABLE) or not any(True for _ in m.parameters(recurse=False))
        for m in model.modules()
    )


class _AvgPool(torch.autograd.Function):
    """Non-overlapping average pooling (kernel = stride = k, no padding) from k² strided slices.

    Same values as `nn.AvgPool2d(k)`; on this machine's CPU kernels (256×16×28×28,
    k = 2) the slices take 2.6 ms forward and 3.8 ms backward against 6.4 and
    7.2 ms for `avg_pool2d` and its backward, and the pools are a third of
    the CNN's step.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, k: int) -> torch.Tensor:
        h, w = a.shape[-2] // k * k, a.shape[-1] // k * k
        out = a[..., 0:h:k, 0:w:k].clone()
        for i in range(k):
            for j in range(k):
                if i or j:
                    out += a[..., i:h:k, j:w:k]
        out *= 1.0 / (k * k)
        ctx.k, ctx.shape, ctx.cropped = k, a.shape, (h, w) != tuple(a.shape[-2:])  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        k, shape = ctx.k, ctx.shape  # type: ignore[attr-defined]
        grad = g.new_zeros(shape) if ctx.cropped else g.new_empty(shape)  # type: ignore[attr-defined]
        h, w = g.shape[-2] * k, g.shape[-1] * k
        share = g * (1.0 / (k * k))
        for i in range(k):
            for j in range(k):
                grad[..., i:h:k, j:w:k] = share
        return grad, None


class _ReluAvgPool(torch.autograd.Function):
    """`_AvgPool` of ReLU(a), without a full-size ReLU(a) in the forward pass.

    The forward clamps each strided slice as it sums them; the backward spreads g/k² over the
    slices and applies ReLU's mask in place, taking the mask from `a` (group norm's output, which
    the caller keeps anyway for its per-example gradient). On 256×16×28×28, one thread, best of 25
    interleaved: forward 4.7 ms against 6.3 ms for ReLU then `_AvgPool`, backward 5.1 against
    5.4 ms. (Writing the masked gradient straight into each strided slice took 21 ms.)
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, k: int) -> torch.Tensor:
        h, w = a.shape[-2] // k * k, a.shape[-1] // k * k
        out = torch.clamp_min(a[..., 0:h:k, 0:w:k], 0.0)
        part = torch.empty_like(out)
        for i in range(k):
            for j in range(k):
                if i or j:
                    out += torch.clamp_min(a[..., i:h:k, j:w:k], 0.0, out=part)
        out *= 1.0 / (k * k)
        ctx.save_for_backward(a)
        ctx.k = k  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (a,) = ctx.saved_tensors  # type: ignore[attr-defined]
        k = ctx.k  # type: ignore[attr-defined]
        h, w = g.shape[-2] * k, g.shape[-1] * k
        grad = a.new_zeros(a.shape) if (h, w) != tuple(a.shape[-2:]) else torch.empty_like(a)
        share = g * (1.0 / (k * k))
        for i in range(k):
            for j in range(k):
                grad[..., i:h:k, j:w:k] = share
        return torch.ops.aten.threshold_backward.grad_input(grad, a, 0.0, grad_input=grad), None


def _fast_pool(m: nn.Module, h: torch.Tensor) -> bool:
    return (
        isinstance(m, nn.AvgPool2d)
        and h.dim() == 4
        and m.kernel_size == m.stride
        and isinstance(m.kernel_size, int)
        and m.padding == 0
        and not m.ceil_mode
        and m.divisor_override is None
    )


@dataclass
class _Kept:
    """One trainable layer in the forward pass: its input, its output, and group norm's statistics."""

    module: nn.Module
    a: torch.Tensor
    out: torch.Tensor
    stats: tuple[torch.Tensor, torch.Tensor] | None = None  # group norm's per-example mean and 1/std


def forward(model: nn.Sequential, x: torch.Tensor, kept: list[_Kept] | None = None) -> torch.Tensor:
    """`model(x)`, faster on this CPU, keeping each trainable layer's input and output in `kept`."""
    h = x
    layers = list(model)
    i = 0
    while i < len(layers):
        m, a, stats = layers[i], h, None
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(m, nn.Conv2d) and h.dim() == 4 and m.in_channels <= FEW_CHANNELS:
            h = m(h.contiguous(memory_format=torch.channels_last)).contiguous()
        elif isinstance(m, nn.GroupNorm) and kept is not None:
            # The aten call returns each example's mean and 1/std, which its per-example gradient needs:
            # no second normalisation pass (1.6 ms on 256×16×28×28, one thread).
            n, c = h.shape[:2]
            h, mean, rstd = torch.native_group_norm(
                h, m.weight, m.bias, n, c, h[0, 0].numel(), m.num_groups, m.eps
            )
            stats = (mean.detach(), rstd.detach())
        elif isinstance(m, nn.ReLU) and nxt is not None and _fast_pool(nxt, h):
            h = _ReluAvgPool.apply(h, nxt.kernel_size)  # type: ignore[no-untyped-call]
            i += 1
        elif _fast_pool(m, h):
            h = _AvgPool.apply(h, m.kernel_size)  # type: ignore[no-untyped-call]
        else:
            h = m(h)
        if kept is not None and isinstance(m, TRAINABLE):
            kept.append(_Kept(m, a.detach(), h, stats))
        i += 1
    return h


def _conv_costs(m: nn.Conv2d, g: torch.Tensor) -> tuple[int, int]:
    """(explicit, ghost) multiply-adds per example for a convolution with output gradient `g`."""
    t = g[0, 0].numel()
    p = m.out_channels // m.groups
    d = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
    return t * p * d, 2 * t * t * (p + d)


def _conv_per_example(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """Per-example weight (and bias) gradients of a convolution, each (B, *shape)."""
    b, c_out, c_in = a.shape[0], m.out_channels, m.in_channels
    # The batch becomes B groups of one convolution's weight gradient: one call to the convolution
    # kernels instead of an im2col per example (measured 5x faster here; unfold + bmm was slower).
    per = conv2d_weight(  # type: ignore[no-untyped-call]
        a.reshape(1, b * c_in, *a.shape[2:]),
        (b * c_out, c_in // m.groups, *m.kernel_size),
        g.reshape(1, b * c_out, *g.shape[2:]),
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=b * m.groups,
    )
    grads = [per.reshape(b, *m.weight.shape)]
    if m.bias is not None:
        grads.append(g.sum(dim=(2, 3)))
    return grads


def _conv_ghost_norms(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖∇W_i‖² + ‖∇b_i‖² of a convolution (groups = 1) without per-example gradients."""
    b = a.shape[0]
    assert not isinstance(m.padding, str)
    cols = nn.functional.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # B × d × T
    gt = g.reshape(b, m.out_channels, -1)  # B × p × T
    gram_a = torch.bmm(cols.transpose(1, 2), cols)  # B × T × T
    gram_g = torch.bmm(gt.transpose(1, 2), gt)
    sq = (gram_a * gram_g).sum(dim=(1, 2))
    if m.bias is not None:
        sq = sq + gt.sum(dim=2).pow(2).sum(dim=1)
    return sq


def _norm_rule(kept: _Kept, g: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Per-example squared gradient norms of one layer and, unless the ghost rule applies, the gradients."""
    m, a, b = kept.module, kept.a, g.shape[0]
    if isinstance(m, nn.Linear) and a.dim() == 2:
        # ‖g_i a_iᵀ‖² = ‖g_i‖²‖a_i‖²; the clipped sum later as one matrix product, no B×out×in tensor.
        g_sq = g.pow(2).sum(dim=1)
        return g_sq * a.pow(2).sum(dim=1) + (g_sq if m.bias is not None else 0.0), None
    if isinstance(m, nn.Conv2d):
        explicit, ghost = _conv_costs(m, g)
        if ghost < explicit and m.groups == 1 and not isinstance(m.padding, str):
            return _conv_ghost_norms(m, a, g), None
        grads = _conv_per_example(m, a, g)
    elif isinstance(m, nn.GroupNorm):
        assert kept.stats is not None
        mean, rstd = (s.repeat_interleave(m.num_channels // m.num_groups, dim=1) for s in kept.stats)
        flat_g, flat_a = g.reshape(b, m.num_channels, -1), a.reshape(b, m.num_channels, -1)
        db = flat_g.sum(dim=2)
        # Σ_hw g·(a - μ)/σ = (Σ_hw g·a - μ Σ_hw g)/σ: no normalised copy of the activations.
        dw = (torch.linalg.vecdot(flat_g, flat_a) - mean * db) * rstd
        grads = [dw, db] if m.weight is not None else []
    elif isinstance(m, nn.LayerNorm):
        normed = nn.functional.layer_norm(a, m.normalized_shape, eps=m.eps)
        grads = [g * normed, g] if m.weight is not None else []
    elif isinstance(m, nn.Linear):
        grads = [torch.einsum("b...o,b...i->boi", g, a)]
        if m.bias is not None:
            grads.append(g.reshape(b, -1, g.shape[-1]).sum(dim=1))
    else:
        raise TypeError(f"no per-example gradient rule for {type(m).__name__}")
    sq = torch.zeros(b, dtype=g.dtype, device=g.device)
    for pg in grads:
        sq = sq + pg.reshape(b, -1).pow(2).sum(dim=1)
    return sq, grads


def _weighted_sum(kept: _Kept, g: torch.Tensor, factor: torch.Tensor) -> list[torch.Tensor]:
    """Σ_i factor_i ∇_i for a layer on the ghost rule: one ordinary gradient on scaled output gradients."""
    m, a = kept.module, kept.a
    scaled = g * factor.view(-1, *([1] * (g.dim() - 1)))
    if isinstance(m, nn.Linear):
        out = [scaled.T @ a]
        if m.bias is not None:
            out.append(scaled.sum(dim=0))
        return out
    assert isinstance(m, nn.Conv2d)
    out = [
        conv2d_weight(  # type: ignore[no-untyped-call]
            a, m.weight.shape, scaled, stride=m.stride, padding=m.padding, dilation=m.dilation
        )
    ]
    if m.bias is not None:
        out.append(scaled.sum(dim=(0, 2, 3)))
    return out


def clipped_sum(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    clip: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Σ_i weight_i · clip_C(∇ loss_i), per parameter in `model.parameters()` order, and the losses.

    `weight` None means every example has weight 1.
    """
    kept: list[_Kept] = []
    losses = loss_fn(forward(model, x, kept), y)
    # Gradients at the layers' outputs only: autograd computes no weight gradient.
    grads_out = torch.autograd.grad(losses.sum(), [k.out for k in kept])
    b = len(x)
    sq = torch.zeros(b, device=x.device)
    per_layer: list[list[torch.Tensor] | None] = []
    for k, g in zip(kept, grads_out, strict=True):
        layer_sq, grads = _norm_rule(k, g)
        sq = sq + layer_sq
        per_layer.append(grads)
    factor = torch.clamp(clip / (sq.sqrt() + 1e-12), max=1.0)
    if weight is not None:
        factor = factor * weight
    summed: list[torch.Tensor] = []
    for k, g, grads in zip(kept, grads_out, per_layer, strict=True):
        if grads is None:
            summed.extend(_weighted_sum(k, g, factor))
        else:
            summed.extend(factor @ pg.reshape(b, -1) for pg in grads)
    return summed, losses.detach()


def _dot_rule(
    kept: _Kept, g: torch.Tensor, grads: list[torch.Tensor] | None, tangents: list[torch.Tensor]
) -> torch.Tensor:
    """∇_iᵀu per example for one layer, u its share of the direction (weight, then bias)."""
    b = g.shape[0]
    if grads is not None:
        out = torch.zeros(b, dtype=g.dtype, device=g.device)
        for pg, u in zip(grads, tangents, strict=True):
            out = out + pg.reshape(b, -1, u.numel()).sum(dim=1) @ u.reshape(-1).to(pg.dtype)
        return out
    # The ghost rule kept no per-example gradient: ∇_iᵀu is the layer's output moved along u (the
    # layer is linear in its parameters) against the gradient at that output, one more forward call.
    m, a = kept.module, kept.a
    weight, bias = tangents[0], (tangents[1] if len(tangents) > 1 else None)
    if isinstance(m, nn.Linear):
        moved = nn.functional.linear(a, weight, bias)
    else:
        assert isinstance(m, nn.Conv2d)
        moved = nn.functional.conv2d(a, weight, bias, m.stride, m.padding, m.dilation, m.groups)
    return (moved * g).reshape(b, -1).sum(dim=1)


def norms_and_dots(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    direction: list[torch.Tensor],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """‖∇ loss_i‖ and ∇ loss_iᵀu for every example, u given per parameter in `model.parameters()` order.

    The same forward and backward pass and the same per-layer rules as `clipped_sum`, so the norms
    are the ones DP-SGD clips by; the appraisal's private release uses them to score rows.
    """
    share = {id(p): u for p, u in zip(model.parameters(), direction, strict=True)}
    kept: list[_Kept] = []
    losses = loss_fn(forward(model, x, kept), y)
    grads_out = torch.autograd.grad(losses.sum(), [k.out for k in kept])
    sq = torch.zeros(len(x), dtype=losses.dtype, device=x.device)
    dots = torch.zeros(len(x), dtype=losses.dtype, device=x.device)
    for k, g in zip(kept, grads_out, strict=True):
        layer_sq, grads = _norm_rule(k, g)
        sq = sq + layer_sq
        tangents = [share[id(p)] for p in k.module.parameters(recurse=False)]
        if tangents:
            dots = dots + _dot_rule(k, g, grads, tangents)
    return sq.sqrt().detach(), dots.detach()
