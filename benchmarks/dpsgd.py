"""Seconds per training step: non-private, Sterling's DP-SGD, its oblivious mode, and Opacus.

Run: `sterling bench dpsgd --format json`.

One run, the same data and models for all four: 28×28×3 inputs, 5 classes,
expected batch 256 drawn by Poisson sampling from 2,048 rows (the
non-private step takes a fixed batch of 256). Models: logistic regression
(one linear layer on the flattened image) and a small CNN (two conv layers
with group norm). Opacus 1.6 runs its GradSampleModule and DPOptimizer on
batches sampled the same way. Each figure is the median over the measured
steps after warm-up.
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


def _median_step(step: Callable[[], None], warmup: int, measured: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(measured):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bench_family(
    family: str, x: torch.Tensor, y: torch.Tensor, warmup: int, measured: int
) -> dict[str, float]:
    graph = template(family, classes=CLASSES)
    q = BATCH / ROWS
    kw = {"clipping_norm": 1.0, "noise_multiplier": 1.0, "sample_rate": q, "steps": 1, "learning_rate": 0.05}

    torch.manual_seed(0)
    plain = build_module(graph, SHAPE)
    opt = torch.optim.SGD(plain.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    def nonprivate() -> None:
        idx = torch.randint(0, ROWS, (BATCH,))
        opt.zero_grad()
        loss_fn(plain(x[idx]), y[idx]).backward()
        opt.step()

    dp = DPSGD(graph, SHAPE, **kw)
    obl = DPSGD(graph, SHAPE, oblivious=True, **kw)

    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(0)
    gsm = GradSampleModule(build_module(graph, SHAPE))
    dpo = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.05),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=BATCH,
    )

    def opacus_step() -> None:
        idx = (torch.rand(ROWS) < q).nonzero().squeeze(1)
        dpo.zero_grad()
        loss_fn(gsm(x[idx]), y[idx]).backward()
        dpo.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure RNG and hooks
        figures = {
            "nonprivate_s": _median_step(nonprivate, warmup, measured),
            "dp_s": _median_step(lambda: dp.step(x, y), warmup, measured),
            "oblivious_s": _median_step(lambda: obl.step(x, y), warmup, measured),
            "opacus_s": _median_step(opacus_step, warmup, measured),
        }
    figures = {k: round(v, 5) for k, v in figures.items()}
    figures["dp_ratio"] = round(figures["dp_s"] / figures["nonprivate_s"], 3)
    figures["oblivious_ratio"] = round(figures["oblivious_s"] / figures["dp_s"], 3)
    figures["opacus_speedup"] = round(figures["opacus_s"] / figures["dp_s"], 3)
    return figures


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
