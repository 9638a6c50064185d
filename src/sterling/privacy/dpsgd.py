"""DP-SGD: Poisson sampling, per-example clipping, Gaussian noise, and a budget filter.

Each step samples every training example independently with probability q
(exactly the Poisson sampling the accountant assumes), computes per-example
gradients, clips each to norm C, sums them, adds N(0, σ²C²) noise to the sum
and divides by the expected batch size qN. Per-example gradients come from
a closed form for logistic regression (one linear layer with softmax cross
entropy), from one batched forward and backward pass with per-layer rules
for models built of linear, conv, group-norm and layer-norm layers
(`persample`: per layer the cheaper of explicit per-example gradients and
ghost norms with book-keeping), and from `torch.func.vmap(grad(...))`
otherwise; tests check all three agree.

Randomness: which rows a step samples and its noise come from `rng`, the
enclave's cryptographic stream (`SecretRandom`): inclusion is decided on
64-bit integers against ⌊q·2⁶⁴⌋, and the noise is Box–Muller from that
stream with Opacus's secure-mode mitigation. `seed` fixes the initial
weights only (a public choice: DP-SGD's guarantee holds for any fixed
start), drawn under a forked torch generator so that no global state is
left seeded by a job.

Data-oblivious mode fixes the batch to a capacity and gathers the sampled
rows with dense 0/1 selection matrices (`oblivious`): every step runs the
same operations on the same shapes and reads every row, whichever rows were
sampled and whatever their values. Unused slots carry weight 0. Capacities
are sized from exact binomial tails so that any overflow in the run has
probability at most the δ the plan set aside for it (`overflow_per_step`
per step); off that event the step is exactly the Poisson one. For logistic
regression, whose per-example terms are two small matrix products, it is
cheaper to skip the gather and weight every row by its 0/1 sampling mask.

Streamed data (`fit_rows`) is sampled the same way over row indices; only the
sampled rows are gathered (`Rows.take`) and the step is the same clipping and
noise, so the accounting is unchanged. Oblivious mode needs every row each
step and is refused there.

What depends on the data alone (‖x_i‖² for logistic regression; the rows with
their labels as one matrix for the oblivious gather) is computed once per
dataset and reused while `step` is given the same, unmodified tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from sterling.crypto.entropy import SecretRandom
from sterling.errors import UsageError
from sterling.privacy import accountant, oblivious, persample
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


#: The overflow probability per step of oblivious mode when no plan sets one (tests, benchmarks).
DEFAULT_OVERFLOW_PER_STEP = 1e-9


# MKL's products of a tall matrix with a 5-column one slow down sharply past a few hundred rows
# on this CPU: for 2,048×2,352 rows and 5 classes, 128-row blocks as one batched product
# took 2.0 ms for the logits against 2.3 ms, and 2.6 ms for Σ_i s_i x_iᵀ against 5.0 ms (measured,
# interleaved, best of 40). Only the oblivious logistic regression, which takes every row, has
# such tall products; the blocks depend on the row count alone.
BLOCK, TALL = 128, 1024


def _blocked(a: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """f applied to `a` (rows × d) as blocks of BLOCK rows: f must act on each row independently."""
    n = len(a)
    if n < TALL:
        return f(a)
    whole = n // BLOCK * BLOCK
    parts = [f(a[:whole].view(n // BLOCK, BLOCK, -1)).reshape(whole, -1)]
    if whole < n:
        parts.append(f(a[whole:]))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _weighted_rows(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sᵀ a, as a batched product over blocks of rows when `a` is tall."""
    n = len(a)
    if n < TALL:
        return s.T @ a
    whole, k = n // BLOCK * BLOCK, n // BLOCK
    out = torch.bmm(s[:whole].view(k, BLOCK, -1).transpose(1, 2), a[:whole].view(k, BLOCK, -1)).sum(dim=0)
    if whole < n:
        out += s[whole:].T @ a[whole:]
    return out


class Rows(Protocol):
    """Training rows gathered by index (a dataset streamed from storage, `sterling.data.rows`)."""

    def __len__(self) -> int: ...

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and labels of the rows at `index` (ascending)."""
        ...


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
        rng: SecretRandom | None = None,
        overflow_per_step: float = DEFAULT_OVERFLOW_PER_STEP,
        device: str | None = None,
    ) -> None:
        if clipping_norm <= 0 or noise_multiplier < 0 or not 0 < sample_rate <= 1 or steps < 1:
            raise UsageError("DP-SGD needs clipping_norm > 0, noise ≥ 0, 0 < sample_rate ≤ 1 and steps ≥ 1")
        self.graph = graph
        self.clip = clipping_norm
        self.sigma = noise_multiplier
        self.q = sample_rate
        self.steps = steps
        #: Steps taken so far: `fit` can stop early (`until`) and a later `fit` continues the run.
        self.taken = 0
        self.oblivious = oblivious
        self.overflow_per_step = overflow_per_step
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        #: The secret stream every sample and every noise draw comes from.
        self.rng = rng if rng is not None else SecretRandom.from_os()
        # The initial weights are the job's (public) choice; nothing else is drawn from its seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = build_module(graph, in_shape).to(self.device)
        self.closed_form = graph.family == "logistic_regression" and graph.loss == "softmax_cross_entropy"
        # Per-example gradient norms and the clipped sum from one batched forward and backward pass
        # where every layer has a rule (`persample`); vmap otherwise.
        self.batched = persample.supported(self.model)
        params = list(self.model.parameters())
        self.params = params
        self.sizes = [p.numel() for p in params]
        # Per dataset, computed once and reused while `step` gets the same, unmodified tensor.
        self._data: tuple[tuple[torch.Tensor, int, torch.Tensor, int], dict[str, torch.Tensor]] | None = None
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

    def _dataset(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Values that depend on the data only, not on the parameters: computed once per dataset."""
        key = self._data[0] if self._data is not None else None
        # The same tensor objects (held here, so their memory cannot be reused) and no in-place change.
        if key is not None and key[0] is x and key[1] == x._version and key[2] is y and key[3] == y._version:
            assert self._data is not None
            return self._data[1]
        flat = x.reshape(len(x), -1)
        cached: dict[str, torch.Tensor] = {}
        if self.closed_form:
            # ‖x_i‖², needed for every example's gradient norm (a 2,048×2,352 pass, ~1 ms, per step before).
            cached["sq"] = flat.pow(2).sum(dim=1)
        elif self.oblivious:
            # The rows with their label as one more column (one selection gathers both), padded with zero
            # rows (never sampled) to the gather's whole blocks and with zero columns to a multiple of 16:
            # MKL took 13 ms for the 347×640 by 640×2,368 product against 20 ms at the odd width 2,353.
            rows = self._oblivious_plan(len(x)).padded
            width = -(-(flat.shape[1] + 1) // 16) * 16
            xy = flat.new_zeros(rows, width)
            xy[: len(x), : flat.shape[1]] = flat
            xy[: len(x), flat.shape[1]] = y.to(flat.dtype)
            cached["xy"] = xy
        self._data = ((x, x._version, y, y._version), cached)
        return cached

    def _clipped_sum(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
        sq: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], float]:
        """Σ_i weight_i · clip(g_i), as one tensor per parameter, and the weighted mean loss.

        `weight` None means every example has weight 1; `sq`, for logistic regression, is ‖x_i‖².
        """
        if self.closed_form:
            summed, losses = self._closed_form(x, y, weight, sq)
        elif self.batched:
            summed, losses = persample.clipped_sum(
                self.model, x, y, weight, clip=self.clip, loss_fn=self._loss
            )
        else:
            grads, losses = self._per_example_vmap(x, y)
            flat_norms = torch.stack([g.reshape(len(x), -1).pow(2).sum(dim=1) for g in grads.values()]).sum(
                dim=0
            )
            factor = torch.clamp(self.clip / (flat_norms.sqrt() + 1e-12), max=1.0)
            if weight is not None:
                factor = factor * weight
            summed = [torch.einsum("i,i...->...", factor, g) for g in grads.values()]
        if weight is None:
            return summed, float(losses.mean()) if len(losses) else 0.0
        return summed, float((losses * weight).sum() / weight.sum().clamp(min=1.0))

    def _closed_form(
        self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, sq: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Logistic regression's clipped sum without autograd: one matrix product each way.

        The loss comes from the same log-softmax as ∂loss/∂logits, and the one-hot labels from a
        comparison with every class (no scatter whose address depends on a label).
        """
        lin = self.model[-1]
        assert isinstance(lin, nn.Linear)
        with torch.no_grad():
            flat = x.reshape(len(x), -1)
            if sq is None:
                sq = flat.pow(2).sum(dim=1)
            logits = _blocked(flat, lambda a: nn.functional.linear(a, lin.weight, lin.bias))
            logp = torch.log_softmax(logits, dim=-1)
            classes = torch.arange(logits.shape[-1], device=y.device)
            onehot = (y[:, None] == classes).to(logp.dtype)
            losses = -(logp * onehot).sum(dim=1)
            err = logp.exp_() - onehot  # ∂loss/∂logits
            # ‖g_i‖² = ‖err_i‖² (‖x_i‖² + 1) for the weight and bias of one linear layer.
            norms = (err.pow(2).sum(dim=1) * (sq + 1)).sqrt_()
            factor = torch.clamp(self.clip / (norms + 1e-12), max=1.0)
            if weight is not None:
                factor = factor * weight
            scaled = err * factor[:, None]
            return [_weighted_rows(scaled, flat), scaled.sum(dim=0)], losses

    # ------------------------------------------------------------- sampling

    def _oblivious_plan(self, n: int) -> oblivious.Plan:
        return oblivious.plan(n, self.q, steps=1, failure=self.overflow_per_step)

    def _sample(self, n: int) -> torch.Tensor:
        """Poisson sampling: each row independently, on integers (`SecretRandom.bernoulli`)."""
        return self.rng.bernoulli(n, self.q)

    def _batch(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The batch, each row's weight (None: all 1) and, for logistic regression, ‖x_i‖²."""
        data = self._dataset(x, y)
        sq = data.get("sq")
        if not self.oblivious:
            idx = mask.nonzero().squeeze(1)
            # index_select: 0.09 ms for 256 rows of 2,352 against 0.5 ms for x[idx] (measured).
            return (
                x.index_select(0, idx),
                y.index_select(0, idx),
                None,
                None if sq is None else sq.index_select(0, idx),
            )
        if self.closed_form:
            # A linear model's per-example terms are cheap: take every row, weighted by the mask.
            return x, y, mask.to(x.dtype), sq
        picked, weight = oblivious.gather(self._oblivious_plan(len(x)), data["xy"], mask)
        d = x[0].numel()
        xb = picked[:, :d].reshape(len(picked), *x.shape[1:])
        yb = picked[:, d].round().to(y.dtype)
        return xb, yb, weight, None

    # ------------------------------------------------------------------ fit

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepLog:
        mask = self._sample(len(x))
        if mask.device != x.device:
            mask = mask.to(x.device)
        xb, yb, weight, sq = self._batch(x, y, mask)
        return self._update(xb, yb, weight, sq, batch=int(mask.sum()), rows=len(x))

    def step_rows(self, rows: Rows) -> StepLog:
        """One step over rows gathered by index (`Rows`): the same sampling, clipping and noise as `step`."""
        if self.oblivious:
            raise UsageError(
                "data-oblivious training reads every row each step; it needs the data in memory, not streamed"
            )
        mask = self._sample(len(rows))
        xb, yb = rows.take(mask.nonzero().squeeze(1))
        return self._update(xb.to(self.device), yb.to(self.device), None, None, batch=len(xb), rows=len(rows))

    def _update(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        weight: torch.Tensor | None,
        sq: torch.Tensor | None,
        *,
        batch: int,
        rows: int,
    ) -> StepLog:
        """Clip, sum, add the noise drawn from the secret stream, and take the optimiser's step."""
        self.model.train()
        if len(xb):
            summed, loss = self._clipped_sum(xb, yb, weight, sq)
        else:
            summed, loss = [torch.zeros_like(p) for p in self.params], 0.0
        # One draw of N(0, 1) for every parameter at once, from the secret stream, scaled by σC.
        noise = self.rng.normal(sum(self.sizes))
        if noise.device != self.device:
            noise = noise.to(self.device)
        expected = self.q * rows
        for p, g, z in zip(self.params, summed, torch.split(noise, self.sizes), strict=True):
            p.grad = g.reshape(p.shape).add(z.view(p.shape), alpha=self.sigma * self.clip).div_(expected)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return StepLog(step=0, batch_size=batch, loss=loss)

    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        epsilon_limit: float | None = None,
        delta: float = 1e-5,
        on_step: Callable[[StepLog], None] | None = None,
        until: int | None = None,
    ) -> TrainResult:
        """Train for `steps` steps, or fewer if the next would spend more than `epsilon_limit`.

        With `until`, stop after step `until` of the run; a later call continues the same run
        (same noise stream, optimiser state and sampling), so the run's ε is that of all the
        steps taken, `epsilon_limit` bounding the whole run. `result.steps` counts them all.
        """
        x, y = x.to(self.device), y.to(self.device)
        return self._loop(lambda: self.step(x, y), epsilon_limit, delta, on_step, until)

    def fit_rows(
        self,
        rows: Rows,
        *,
        epsilon_limit: float | None = None,
        delta: float = 1e-5,
        on_step: Callable[[StepLog], None] | None = None,
        until: int | None = None,
    ) -> TrainResult:
        """`fit` over rows gathered by index each step (a dataset streamed from its container)."""
        return self._loop(lambda: self.step_rows(rows), epsilon_limit, delta, on_step, until)

    def _loop(
        self,
        one: Callable[[], StepLog],
        epsilon_limit: float | None,
        delta: float,
        on_step: Callable[[StepLog], None] | None,
        until: int | None,
    ) -> TrainResult:
        allowed = self.steps
        if epsilon_limit is not None:
            allowed = max_steps_within(
                epsilon_limit, noise_multiplier=self.sigma, sample_rate=self.q, delta=delta, upper=self.steps
            )
        last = allowed if until is None else min(allowed, max(0, until))
        result = TrainResult(steps=self.taken, stopped_by_budget=allowed < self.steps)
        for t in range(self.taken, last):
            log = one()
            log.step = t + 1
            result.log.append(log)
            result.steps = self.taken = t + 1
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
