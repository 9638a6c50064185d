"""Seconds per training step: non-private, Sterling's DP-SGD, its oblivious mode, and Opacus.

Run: `sterling bench dpsgd --format json`.

One run, the same data and models for all four: 28×28×3 inputs, 5 classes,
expected batch 256 drawn by Poisson sampling from 2,048 rows (the
non-private step takes a fixed batch of 256). Models: logistic regression
(one linear layer on the flattened image) and a small CNN (two conv layers
with group norm).

- non-private: the same PyTorch model (`build_module`), cross-entropy,
  `backward()` and `torch.optim.SGD.step()`: a plain training step.
- Opacus 1.6 as its documentation recommends for this model: the same
  model wrapped in `GradSampleModule` (what `make_private` builds for its
  default `grad_sample_mode="hooks"`: per-sample gradients from module
  hooks, unfold + einsum for conv) and
  a `DPOptimizer` (per-example clipping, Gaussian noise), on batches
  Poisson-sampled the same way; `PrivacyEngine.make_private` builds exactly
  this pair. Its flat clipping and noise match Sterling's.
- Sterling DP and oblivious DP: `DPSGD.step` on the whole dataset (it
  samples).

All four take their rows with `index_select`. The steps run interleaved,
one of each in turn, so that load from other processes on the shared
machine falls on all four alike; each figure is the median over the
measured rounds after warm-up (`fastest` gives each one's fastest round).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from rich.table import Table
from torch import nn

from sterling.privacy.dpsgd import DPSGD, build_module
from sterling.privacy.graph import template

ROWS, BATCH, CLASSES, SHAPE = 2048, 256, 5, (3, 28, 28)
OPACUS_MODE = "GradSampleModule (grad_sample_mode 'hooks', the default) + DPOptimizer"


def _interleaved(
    steps: dict[str, Callable[[], object]], warmup: int, measured: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median and fastest seconds per call of each step, taking turns (one round = one call of each)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(measured):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}, {n: min(t) for n, t in times.items()}


def _bench_family(
    family: str, x: torch.Tensor, y: torch.Tensor, warmup: int, measured: int
) -> dict[str, Any]:
    graph = template(family, classes=CLASSES)
    q = BATCH / ROWS
    kw: dict[str, Any] = {
        "clipping_norm": 1.0,
        "noise_multiplier": 1.0,
        "sample_rate": q,
        "steps": 1,
        "learning_rate": 0.05,
    }

    torch.manual_seed(0)
    plain = build_module(graph, SHAPE)
    opt = torch.optim.SGD(plain.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    def nonprivate() -> None:
        idx = torch.randint(0, ROWS, (BATCH,))
        opt.zero_grad()
        loss_fn(plain(x.index_select(0, idx)), y.index_select(0, idx)).backward()
        opt.step()

    dp = DPSGD(graph, SHAPE, **kw)
    obl = DPSGD(graph, SHAPE, oblivious=True, **kw)

    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(0)
    gsm = GradSampleModule(build_module(graph, SHAPE))  # what make_private builds by default ("hooks")
    dpo = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.05),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=BATCH,
    )

    def opacus_step() -> None:
        idx = (torch.rand(ROWS) < q).nonzero().squeeze(1)
        dpo.zero_grad()
        loss_fn(gsm(x.index_select(0, idx)), y.index_select(0, idx)).backward()
        dpo.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure RNG and hooks
        figures, fastest = _interleaved(
            {
                "nonprivate_s": nonprivate,
                "dp_s": lambda: dp.step(x, y),
                "oblivious_s": lambda: obl.step(x, y),
                "opacus_s": opacus_step,
            },
            warmup,
            measured,
        )
    figures = {k: round(v, 5) for k, v in figures.items()}
    figures["dp_ratio"] = round(figures["dp_s"] / figures["nonprivate_s"], 3)
    figures["oblivious_ratio"] = round(figures["oblivious_s"] / figures["dp_s"], 3)
    figures["opacus_speedup"] = round(figures["opacus_s"] / figures["dp_s"], 3)
    # The fastest round of each: on a loaded machine, the closest to the code's own cost.
    return {**figures, "fastest": {k: round(v, 5) for k, v in fastest.items()}}


def run(*, quick: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.rand(ROWS, *SHAPE)
    y = torch.randint(0, CLASSES, (ROWS,))
    warmup, measured = (1, 3) if quick else (3, 15)
    return {
        "logreg": _bench_family("logistic_regression", x, y, warmup, measured),
        "cnn": _bench_family("cnn", x, y, warmup, measured),
        "rows": ROWS,
        "expected_batch": BATCH,
        "threads": torch.get_num_threads(),
        "opacus_mode": OPACUS_MODE,
        "goals": {"logreg_dp_ratio": 1.2, "cnn_dp_ratio": 1.5, "opacus_speedup": 1.5, "oblivious_ratio": 1.5},
    }


def table(result: dict[str, Any]) -> Table:
    t = Table(title=f"seconds per step (expected batch {result['expected_batch']} of {result['rows']} rows)")
    for col in (
        "model",
        "non-private",
        "Sterling DP",
        "oblivious",
        "Opacus",
        "DP/non-private",
        "oblivious/DP",
        "Opacus/DP",
    ):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name in ("logreg", "cnn"):
        r = result[name]
        t.add_row(
            name,
            f"{r['nonprivate_s']:.4f}",
            f"{r['dp_s']:.4f}",
            f"{r['oblivious_s']:.4f}",
            f"{r['opacus_s']:.4f}",
            f"{r['dp_ratio']:.2f}",
            f"{r['oblivious_ratio']:.2f}",
            f"{r['opacus_speedup']:.2f}",
        )
    return t
