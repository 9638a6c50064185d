"""DP-SGD: Poisson sampling, per-example clipping, Gaussian noise, and a budget filter.

Each step samples every training example independently with probability q
(exactly the Poisson sampling the accountant assumes), computes per-example
gradients, clips each to norm C, sums them, adds N(0, σ²C²) noise to the sum
and divides by the expected batch size qN. Per-example gradients come from
a closed form for logistic regression (one linear layer with softmax cross
entropy), from one batched backward pass with per-layer rules for models
built of linear, conv, group-norm and layer-norm layers (`persample`), and
from `torch.func.vmap(grad(...))` otherwise; tests check all three agree.

Data-oblivious mode fixes the batch to a capacity B (the expected size plus
six standard deviations) and gathers the sampled rows with a dense 0/1
selection matrix: every step runs the same operations on the same shapes and
reads every row, whichever rows were sampled and whatever their values.
Unused slots carry weight 0. (In the one-in-a-billion event that more than B
rows are sampled, the surplus is dropped, which can only lower sensitivity.)
For logistic regression, whose per-example terms are two small matrix
products, it is cheaper to skip the gather and weight every row by its 0/1
sampling mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from sterling.errors import UsageError
from sterling.privacy import accountant, persample
from sterling.privacy.graph import (
    Activation,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    GroupNorm,
    LayerNorm,
    Linear,
    ModelGraph,
    Pool,
    Shape,
    infer_shapes,
)


def build_module(graph: ModelGraph, in_shape: Shape) -> nn.Sequential:
    """The PyTorch module for `graph` on per-example inputs of `in_shape` (channels first)."""
    shapes = [tuple(in_shape), *infer_shapes(graph, tuple(in_shape))]
    modules: list[nn.Module] = []
    for layer, before in zip(graph.layers, shapes, strict=False):
        if isinstance(layer, Linear):
            modules.append(nn.Linear(before[0], layer.out))
        elif isinstance(layer, Conv2d):
            modules.append(nn.Conv2d(before[0], layer.out, layer.kernel, layer.stride, layer.padding))
        elif isinstance(layer, Pool):
            modules.append(
                nn.MaxPool2d(layer.kernel) if layer.type == "maxpool" else nn.AvgPool2d(layer.kernel)
            )
        elif isinstance(layer, Activation):
            modules.append({"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[layer.type]())
        elif isinstance(layer, Flatten):
            modules.append(nn.Flatten())
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.p))
        elif isinstance(layer, GroupNorm):
            modules.append(nn.GroupNorm(layer.groups, before[0]))
        elif isinstance(layer, LayerNorm):
            modules.append(nn.LayerNorm(list(before)))
        elif isinstance(layer, BatchNorm):
            raise UsageError("batch norm mixes examples; DP-SGD cannot train it")
    return nn.Sequential(*modules)


def oblivious_capacity(n: int, q: float) -> int:
    """Batch capacity for oblivious mode: expected size plus six standard deviations."""
    mean = n * q
    return min(n, math.ceil(mean + 6 * math.sqrt(mean * (1 - q)) + 1))


@dataclass
class StepLog:
    step: int
    batch_size: int
    loss: float
    epsilon: float | None = None


@dataclass
class TrainResult:
    steps: int
    stopped_by_budget: bool
    log: list[StepLog] = field(default_factory=list)


class DPSGD:
    """Differentially private SGD for a `ModelGraph`. Settings here; data in `fit`."""

    def __init__(
        self,
        graph: ModelGraph,
        in_shape: Shape,
        *,
        clipping_norm: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        learning_rate: float,
        optimizer: str = "sgd",
        oblivious: bool = False,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        if clipping_norm <= 0 or noise_multiplier < 0 or not 0 < sample_rate <= 1 or steps < 1:
            raise UsageError("DP-SGD needs clipping_norm > 0, noise ≥ 0, 0 < sample_rate ≤ 1 and steps ≥ 1")
        self.graph = graph
        self.clip = clipping_norm
        self.sigma = noise_multiplier
        self.q = sample_rate
        self.steps = steps
        self.oblivious = oblivious
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        torch.manual_seed(seed)
        self.model = build_module(graph, in_shape).to(self.device)
        self.closed_form = graph.family == "logistic_regression" and graph.loss == "softmax_cross_entropy"
        # Per-example gradients from one batched backward pass where every layer has a rule; vmap otherwise.
        self.hooks = persample.supported(self.model)
        params = list(self.model.parameters())
        if optimizer == "adam":
            self.opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=learning_rate)
        else:
            self.opt = torch.optim.SGD(
                params, lr=learning_rate, momentum=0.9 if optimizer == "momentum" else 0.0
            )

    # ------------------------------------------------------------ gradients

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.graph.loss == "logistic":
            return nn.functional.binary_cross_entropy_with_logits(
                logits.squeeze(-1), y.float(), reduction="none"
            )
        return nn.functional.cross_entropy(logits, y, reduction="none")

    def _per_example_vmap(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        params = {k: v.detach() for k, v in self.model.named_parameters()}

        def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.model, p, (xi.unsqueeze(0),))
            return self._loss(out, yi.unsqueeze(0)).sum()

        grads = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")(params, x, y)
        with torch.no_grad():
            losses = self._loss(self.model(x), y)
        return grads, losses

    def _clipped_sum(
        self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor
    ) -> tuple[list[torch.Tensor], float]:
        """Σ_i weight_i · clip(g_i), as one tensor per parameter, and the weighted mean loss."""
        if self.closed_form:
            lin = self.model[-1]
            assert isinstance(lin, nn.Linear)
            flat = x.reshape(len(x), -1)
            logits = lin(flat)
            probs = torch.softmax(logits.detach(), dim=-1)
            err = probs - nn.functional.one_hot(y, logits.shape[-1]).to(probs.dtype)  # ∂loss/∂logits
            # ‖g_i‖² = ‖err_i‖² (‖x_i‖² + 1) for the weight and bias of one linear layer.
            norms = err.norm(dim=1) * torch.sqrt(flat.pow(2).sum(dim=1) + 1)
            factor = weight * torch.clamp(self.clip / (norms + 1e-12), max=1.0)
            scaled = err * factor[:, None]
            losses = nn.functional.cross_entropy(logits.detach(), y, reduction="none")
            summed = [scaled.T @ flat, scaled.sum(dim=0)]
        elif self.hooks:
            summed, losses = persample.clipped_sum(
                self.model, x, y, weight, clip=self.clip, loss_fn=self._loss
            )
        else:
            grads, losses = self._per_example_vmap(x, y)
            flat_norms = torch.stack([g.reshape(len(x), -1).pow(2).sum(dim=1) for g in grads.values()]).sum(
                dim=0
            )
            factor = weight * torch.clamp(self.clip / (flat_norms.sqrt() + 1e-12), max=1.0)
            summed = [torch.einsum("i,i...->...", factor, g) for g in grads.values()]
        mean_loss = float((losses * weight).sum() / weight.sum().clamp(min=1.0))
        return summed, mean_loss

    # ------------------------------------------------------------- sampling

    def _sample(self, n: int) -> torch.Tensor:
        """Poisson sampling: each row independently with probability q."""
        return torch.rand(n, generator=self.generator) < self.q

    def _batch(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.oblivious:
            idx = mask.nonzero().squeeze(1)
            return x[idx], y[idx], torch.ones(len(idx), device=x.device)
        if self.closed_form:
            # A linear model's per-example terms are cheap: take every row, weighted by the mask.
            return x, y, mask.to(x.dtype)
        n, cap = len(x), oblivious_capacity(len(x), self.q)
        slot = torch.cumsum(mask.long(), 0) - 1  # the slot each sampled row goes to
        select = (slot[None, :] == torch.arange(cap)[:, None]) & mask[None, :]  # cap × n, dense
        sel = select.to(x.dtype)
        xb = (sel @ x.reshape(n, -1)).reshape(cap, *x.shape[1:])
        yb = (select.long() @ y.long()).to(y.dtype)
        return xb, yb, select.any(dim=1).to(x.dtype)

    # ------------------------------------------------------------------ fit

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepLog:
        mask = self._sample(len(x)).to(x.device)
        xb, yb, weight = self._batch(x, y, mask)
        self.model.train()
        if len(xb):
            summed, loss = self._clipped_sum(xb, yb, weight)
        else:
            summed, loss = [torch.zeros_like(p) for p in self.model.parameters()], 0.0
        expected = self.q * len(x)
        for p, g in zip(self.model.parameters(), summed, strict=True):
            noise = torch.normal(0.0, self.sigma * self.clip, size=p.shape, generator=self.generator).to(
                p.device
            )
            p.grad = (g.reshape(p.shape) + noise) / expected
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return StepLog(step=0, batch_size=int(mask.sum()), loss=loss)

    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epsilon_limit: float | None = None,
        delta: float = 1e-5,
        on_step: Callable[[StepLog], None] | None = None,
    ) -> TrainResult:
        """Train for `steps` steps, or fewer if the next would spend more than `epsilon_limit`."""
        x, y = x.to(self.device), y.to(self.device)
        allowed = self.steps
        if epsilon_limit is not None:
            allowed = max_steps_within(
                epsilon_limit, noise_multiplier=self.sigma, sample_rate=self.q, delta=delta, upper=self.steps
            )
        result = TrainResult(steps=0, stopped_by_budget=allowed < self.steps)
        for t in range(allowed):
            log = self.step(x, y)
            log.step = t + 1
            result.log.append(log)
            result.steps = t + 1
            if on_step is not None:
                on_step(log)
        return result


def max_steps_within(
    epsilon_limit: float, *, noise_multiplier: float, sample_rate: float, delta: float, upper: int
) -> int:
    """The budget filter: the most steps (≤ upper) whose PLD ε stays within `epsilon_limit`."""

    def eps(steps: int) -> float:
        return accountant.pld_epsilon(accountant.DpSgdParams(noise_multiplier, sample_rate, steps, delta))

    if eps(upper) <= epsilon_limit:
        return upper
    lo, hi = 0, upper  # eps(lo) ≤ limit < eps(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if eps(mid) <= epsilon_limit:
            lo = mid
        else:
            hi = mid
    return lo
