"""Influence-function appraisal against leave-one-provider-out retraining, baselines and fake data.

Run: `sterling bench appraisal --format json`.

All on scikit-learn's breast-cancer data (569 rows, 30 features), split 70/30
into training rows and the consumer's clean validation set per seed,
features standardised with the training split's statistics. Models are
Sterling's logistic-regression template (two softmax outputs) trained to
convergence by full-batch L-BFGS in float64 on Σ_i ℓ_i + (α/2)‖θ‖², α = 3
(chosen by validation loss, see ALPHA), deterministic; the appraisers get damping
λ = α/N, which makes the influence formula that objective's.

- `spearman`: 10 providers of random sizes (≥ 10 rows); ground truth is the
  change in validation loss after exact retraining without each provider
  (same solver, from zero). Sterling's method is `NewtonGroupInfluence`
  (one Newton step per provider, validation loss evaluated there); the
  first-order sum is reported beside it. Mean over seeds.
- `speedup`: that retraining's wall time over Sterling's appraisal's, in the
  same run (median of repeats; warm-started retraining reported beside it).
- `f1`: 10% of training labels flipped, the 10% lowest-valued rows flagged;
  F1 against the flipped set (= precision = recall), mean over seeds.
- `noise_detection_rate`: 8 honest providers plus one selling standard-normal
  features (the standardised data's scale) with random labels, as many rows
  as an average honest one; detected when its value is negative and the
  lowest. Also through the DP release (`PrivateInfluence`, C = 1) on a
  DP-SGD-trained model, at ε = 0.5 and 1 (many Laplace draws per seed).
- `nn`: the same leave-one-provider-out test on Sterling's MLP template
  (30→64 tanh→2, 2,114 parameters; retraining warm-started, as the loss is
  not convex): exact Hessian, conjugate gradients and last-layer influence,
  their agreement and time: the measurement behind the choice for networks.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.table import Table
from scipy.stats import spearmanr
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

from sterling.appraisal import AppraisalData, AppraisalResult
from sterling.appraisal.baselines import KnnShapley, SelfInfluence, TrainingLoss
from sterling.appraisal.influence import (
    ConjugateGradientInfluence,
    ExactInfluence,
    LastLayerInfluence,
    NewtonGroupInfluence,
)
from sterling.appraisal.release import PrivateInfluence
from sterling.privacy import accountant
from sterling.privacy.dpsgd import DPSGD, build_module
from sterling.privacy.graph import template

#: The L2 strength, chosen once from {0.3, 1, 3, 10, 30, 100} by the mean clean validation loss
#: over ten splits (0.102, 0.082, 0.077, 0.085, 0.106, 0.148): what a consumer would pick.
ALPHA = 3.0
LOSS = "softmax_cross_entropy"
Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _split(seed: int) -> Split:
    x, y = load_breast_cancer(return_X_y=True)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    mu, sd = xtr.mean(axis=0), xtr.std(axis=0)
    return (
        torch.tensor((xtr - mu) / sd),
        torch.tensor(ytr),
        torch.tensor((xva - mu) / sd),
        torch.tensor(yva),
    )


def _fit(family: str, x: torch.Tensor, y: torch.Tensor, *, init: nn.Module | None = None) -> nn.Sequential:
    """argmin Σ ℓ_i + (α/2)‖θ‖² by full-batch L-BFGS in float64, from zero (or `init`)."""
    torch.manual_seed(0)
    model = build_module(template(family, classes=2), (x.shape[1],)).to(torch.float64)
    with torch.no_grad():
        if init is not None:
            for p, q in zip(model.parameters(), init.parameters(), strict=True):
                p.copy_(q)
        elif family == "logistic_regression":
            for p in model.parameters():
                p.zero_()
    params = list(model.parameters())
    opt = torch.optim.LBFGS(
        params,
        lr=1,
        max_iter=2000,
        tolerance_grad=1e-9,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    n = len(x)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        reg = sum((p * p).sum() for p in params)
        loss = (nn.functional.cross_entropy(model(x), y, reduction="sum") + 0.5 * ALPHA * reg) / n
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[arg-type]
    return model


def _val_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def _owners(rng: np.random.Generator, n: int, parts: int, least: int = 10) -> np.ndarray:
    sizes = rng.multinomial(n - parts * least, rng.dirichlet(np.full(parts, 2.0))) + least
    return rng.permutation(np.repeat(np.arange(parts), sizes))


def _data(xtr: torch.Tensor, ytr: torch.Tensor, owner: np.ndarray, parts: int, s: Split) -> AppraisalData:
    return AppraisalData(xtr.float(), ytr, owner, parts, s[2].float(), s[3], LOSS)


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rho(a: Any, b: Any) -> float:
    return float(spearmanr(a, b)[0])


def _dpsgd(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[nn.Module, float]:
    """Sterling's DP-SGD on the logistic-regression template: C = 1, σ = 2, expected batch 64."""
    q, steps, sigma = 64 / len(x), 300, 2.0
    engine = DPSGD(
        template("logistic_regression", classes=2),
        (x.shape[1],),
        clipping_norm=1.0,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        learning_rate=0.5,
        seed=seed,
        device="cpu",
    )
    engine.fit(x.float(), y)
    return engine.model.eval(), _epsilon(sigma, q, steps)


@functools.lru_cache(maxsize=8)
def _epsilon(sigma: float, q: float, steps: int) -> float:
    return accountant.pld_epsilon(accountant.DpSgdParams(sigma, q, steps, 1e-5))


# ------------------------------------------------------------- leave-one-provider-out


def _loo(seed: int, parts: int, repeats: int) -> dict[str, Any]:
    s = _split(seed)
    xtr, ytr, xva, yva = s
    rng = np.random.default_rng(seed)
    owner = _owners(rng, len(xtr), parts)
    model = _fit("logistic_regression", xtr, ytr)
    base = _val_loss(model, xva, yva)
    kept = [torch.from_numpy(owner != p) for p in range(parts)]

    start = time.perf_counter()
    truth = [_val_loss(_fit("logistic_regression", xtr[k], ytr[k]), xva, yva) - base for k in kept]
    t_loo = time.perf_counter() - start
    start = time.perf_counter()
    for k in kept:
        _fit("logistic_regression", xtr[k], ytr[k], init=model)
    t_warm = time.perf_counter() - start

    data = _data(xtr, ytr, owner, parts, s)
    damping = ALPHA / len(xtr)
    sterling = NewtonGroupInfluence(influence=ExactInfluence(damping=damping))
    first = ExactInfluence(damping=damping)
    result = sterling.fit(model, data)
    t_inf = _median_time(lambda: sterling.fit(model, data), repeats)
    t_first = _median_time(lambda: first.fit(model, data), repeats)
    # The same values for a DP-SGD-trained model (no regulariser: the default damping), and the
    # noiseless private release, against the same ground truth.
    dp_model, dp_eps = _dpsgd(xtr, ytr, seed)
    dp = NewtonGroupInfluence(influence=ExactInfluence()).fit(dp_model, data)
    private = PrivateInfluence(clip=1.0, epsilon=1.0).noiseless(dp_model, data)
    return {
        "spearman": _rho(truth, result.per_provider),
        "spearman_first_order": _rho(truth, first.fit(model, data).per_provider),
        "spearman_dpsgd": _rho(truth, dp.per_provider),
        "spearman_private_noiseless": _rho(truth, private.per_provider),
        "dpsgd_epsilon": dp_eps,
        "loo_s": t_loo,
        "loo_warm_s": t_warm,
        "influence_s": t_inf,
        "first_order_s": t_first,
        "sizes": np.bincount(owner, minlength=parts).tolist(),
    }


# ------------------------------------------------------------- noisy labels


def _f1(values: np.ndarray, flipped: np.ndarray) -> float:
    k = len(flipped)
    low = set(np.argsort(values, kind="stable")[:k].tolist())
    return len(low & set(flipped.tolist())) / k


def _noisy_labels(seed: int) -> dict[str, float]:
    s = _split(seed)
    xtr, ytr = s[0], s[1].clone()
    rng = np.random.default_rng(1000 + seed)
    flipped = rng.choice(len(xtr), size=round(0.1 * len(xtr)), replace=False)
    ytr[flipped] = 1 - ytr[flipped]
    model = _fit("logistic_regression", xtr, ytr)
    data = _data(xtr, ytr, np.zeros(len(xtr), dtype=np.int64), 1, s)
    exact = ExactInfluence(damping=ALPHA / len(xtr))
    methods: dict[str, Any] = {
        "sterling": exact,
        "loss": TrainingLoss(),
        "knn_shapley": KnnShapley(k=10),
        "self_influence": SelfInfluence(influence=exact),
    }
    out = {}
    for name, method in methods.items():
        result: AppraisalResult = method.fit(model, data)
        assert result.per_example is not None
        out[name] = _f1(result.per_example, flipped)
    return out


# ------------------------------------------------------------- a provider selling noise


def _noise_provider(seed: int, draws: int, epsilons: tuple[float, ...]) -> dict[str, Any]:
    s = _split(seed)
    xtr, ytr = s[0], s[1]
    rng = np.random.default_rng(2000 + seed)
    honest = 8
    owner = _owners(rng, len(xtr), honest)
    rows = len(xtr) // honest
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([xtr, torch.randn(rows, xtr.shape[1], generator=gen, dtype=torch.float64)])
    y = torch.cat([ytr, torch.randint(0, 2, (rows,), generator=gen)])
    owner = np.concatenate([owner, np.full(rows, honest)])
    data = _data(x, y, owner, honest + 1, s)

    def caught(values: tuple[float, ...] | np.ndarray) -> bool:
        v = np.asarray(values)
        return bool(v[honest] < 0 and int(np.argmin(v)) == honest)

    model = _fit("logistic_regression", x, y)
    exact = NewtonGroupInfluence(influence=ExactInfluence(damping=ALPHA / len(x))).fit(model, data)
    dp_model, _ = _dpsgd(x, y, seed)
    dp = NewtonGroupInfluence(influence=ExactInfluence()).fit(dp_model, data)
    out: dict[str, Any] = {
        "sterling": caught(exact.per_provider),
        "flagged": exact.flagged()[honest],
        "honest_flagged": sum(exact.flagged()[:honest]),
        "dpsgd": caught(dp.per_provider),
    }
    for eps in epsilons:
        mech = PrivateInfluence(clip=1.0, epsilon=eps, rng=np.random.default_rng(3000 + seed))
        exact_values = mech.noiseless(dp_model, data).per_provider
        out["private_noiseless"] = caught(exact_values)
        out[f"private_eps_{eps:g}"] = float(
            np.mean([caught(mech.fit(dp_model, data).per_provider) for _ in range(draws)])
        )
    return out


# ------------------------------------------------------------- networks


def _nn(seed: int, parts: int) -> dict[str, Any]:
    s = _split(seed)
    xtr, ytr, xva, yva = s
    owner = _owners(np.random.default_rng(seed), len(xtr), parts)
    model = _fit("mlp", xtr, ytr)
    base = _val_loss(model, xva, yva)
    start = time.perf_counter()
    truth = [
        _val_loss(_fit("mlp", xtr[k], ytr[k], init=model), xva, yva) - base
        for k in (torch.from_numpy(owner != p) for p in range(parts))
    ]
    t_loo = time.perf_counter() - start
    data = _data(xtr, ytr, owner, parts, s)
    damping = ALPHA / len(xtr)
    methods = {
        "exact": ExactInfluence(damping=damping),
        "cg": ConjugateGradientInfluence(damping=damping),
        "last_layer": LastLayerInfluence(damping=damping),
        "newton_last_layer": NewtonGroupInfluence(influence=LastLayerInfluence(damping=damping)),
    }
    out: dict[str, Any] = {"loo_s": t_loo, "params": sum(p.numel() for p in model.parameters())}
    results = {}
    for name, method in methods.items():
        start = time.perf_counter()
        results[name] = method.fit(model, data)
        out[f"{name}_s"] = time.perf_counter() - start
        out[f"{name}_spearman"] = _rho(truth, results[name].per_provider)
    ref = results["exact"].per_example
    for name in ("cg", "last_layer"):
        out[f"{name}_vs_exact_per_example"] = _rho(ref, results[name].per_example)
    return out


# ------------------------------------------------------------- the run


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([float(r[key]) for r in rows]))


def run(*, quick: bool = False) -> dict[str, Any]:
    # One thread: these problems are small, and both sides of every ratio run alike.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> dict[str, Any]:
    loo_seeds = list(range(2 if quick else 5))
    label_seeds = list(range(2 if quick else 5))
    noise_seeds = list(range(5 if quick else 10))
    draws, epsilons = (50 if quick else 100), (0.5, 1.0)
    loo = [_loo(s, 10, 3 if quick else 7) for s in loo_seeds]
    labels = [_noisy_labels(s) for s in label_seeds]
    noise = [_noise_provider(s, draws, epsilons) for s in noise_seeds]
    t_loo, t_inf = sum(r["loo_s"] for r in loo), sum(r["influence_s"] for r in loo)
    result: dict[str, Any] = {
        "spearman": round(_mean(loo, "spearman"), 4),
        "spearman_min": round(min(r["spearman"] for r in loo), 4),
        "spearman_per_seed": [round(r["spearman"], 4) for r in loo],
        "spearman_first_order": round(_mean(loo, "spearman_first_order"), 4),
        "spearman_dpsgd": round(_mean(loo, "spearman_dpsgd"), 4),
        "spearman_private_noiseless": round(_mean(loo, "spearman_private_noiseless"), 4),
        "dpsgd_epsilon": round(loo[0]["dpsgd_epsilon"], 3),
        "speedup": round(t_loo / t_inf, 1),
        "speedup_warm_start": round(sum(r["loo_warm_s"] for r in loo) / t_inf, 1),
        "speedup_first_order": round(t_loo / sum(r["first_order_s"] for r in loo), 1),
        "loo_retrain_s": round(t_loo / len(loo), 4),
        "influence_s": round(t_inf / len(loo), 5),
        "providers": 10,
        "provider_sizes": [r["sizes"] for r in loo],
        "f1": {k: round(float(np.mean([r[k] for r in labels])), 4) for k in labels[0]},
        "f1_per_seed": {k: [round(r[k], 4) for r in labels] for k in labels[0]},
        "noise_detection_rate": _mean(noise, "sterling"),
        "noise_flagged_rate": _mean(noise, "flagged"),
        "honest_flagged_per_seed": [int(r["honest_flagged"]) for r in noise],
        "noise_detection_rate_dpsgd": _mean(noise, "dpsgd"),
        "private_detection_rate": {
            "noiseless": _mean(noise, "private_noiseless"),
            **{f"eps_{e:g}": round(_mean(noise, f"private_eps_{e:g}"), 4) for e in epsilons},
        },
        "private_clip": 1.0,
        "private_draws_per_seed": draws,
        "seeds": {"loo": loo_seeds, "noisy_labels": label_seeds, "noise_provider": noise_seeds},
        "goals": {"spearman": 0.9, "speedup": 100, "f1": 0.87, "noise_detection_rate": 1.0},
    }
    if not quick:
        result["nn"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in _nn(0, 10).items()}
    f1 = result["f1"]
    result["met"] = {
        "spearman": result["spearman"] >= 0.9,
        "speedup": result["speedup"] >= 100,
        "f1": f1["sterling"] >= 0.87 and all(f1["sterling"] > v for k, v in f1.items() if k != "sterling"),
        "noise_detection_rate": result["noise_detection_rate"] >= 1.0,
    }
    return result


def table(result: dict[str, Any]) -> Table:
    t = Table(title="Influence appraisal (breast cancer, logistic regression)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("goal", justify="right")
    goals, met = result["goals"], result["met"]

    def mark(key: str) -> str:
        return f"{goals[key]} {'✓' if met[key] else '✗'}"

    t.add_row("Spearman vs leave-one-provider-out (mean)", f"{result['spearman']:.3f}", mark("spearman"))
    t.add_row("  first-order sum", f"{result['spearman_first_order']:.3f}", "")
    t.add_row("  DP-SGD model", f"{result['spearman_dpsgd']:.3f}", "")
    t.add_row("  private release, before noise", f"{result['spearman_private_noiseless']:.3f}", "")
    t.add_row("speed-up over retraining", f"{result['speedup']:.0f}×", mark("speedup"))
    t.add_row("  over warm-started retraining", f"{result['speedup_warm_start']:.0f}×", "")
    for k, v in result["f1"].items():
        t.add_row(f"F1, flipped labels: {k}", f"{v:.3f}", mark("f1") if k == "sterling" else "")
    t.add_row(
        "noise provider detected", f"{result['noise_detection_rate']:.0%}", mark("noise_detection_rate")
    )
    for k, v in result["private_detection_rate"].items():
        t.add_row(f"  private release, {k}", f"{v:.0%}", "")
    for k, v in result.get("nn", {}).items():
        t.add_row(f"MLP: {k}", f"{v:.4g}" if isinstance(v, float) else str(v), "")
    return t
