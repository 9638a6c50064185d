"""The private release for networks: last linear layer against every parameter (issue 6).

Run: `.venv/bin/python benchmarks/_appraisal_networks.py [mlp|cnn|all] [--seeds N]` (prints JSON).
Not a registered benchmark (the underscore): its figures are in docs/appraisal.md.

- `mlp`: Sterling's MLP template (30→64 tanh→2) trained to convergence with L2
  on breast cancer (as `benchmarks/appraisal.py`'s `nn` block), 10 providers,
  ground truth by warm-started leave-one-provider-out retraining. Spearman of
  `PrivateInfluence`'s values against it, before noise and averaged over
  Laplace draws at ε = 0.15 (the demo CNN's value share) and 1, for the last
  layer (the body frozen: the old release) and for every parameter with CG on
  the validation loss's Gauss–Newton matrix or Hessian at several iteration
  caps (1 iteration: v ∝ ∇L_val, no curvature).
- `cnn`: the demo's CNN template on synthetic fundus photographs (demo
  settings: 3,600 images among six providers, 360 validation rows, DP-SGD at
  ε = 3, C = 0.5), plus one fake provider with 12% as many rows: the demo's
  (copied photographs, grades reversed), shuffled labels, or pixels of noise.
  Is the fake provider's value the lowest, and negative? Before noise and
  over draws at ε = 0.15; and the release's wall time.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import appraisal as base
from sterling.appraisal import AppraisalData
from sterling.appraisal.network_terms import GaussNewton, Hessian
from sterling.appraisal.release import PrivateInfluence
from sterling.appraisal.solvers import ConjugateGradient
from sterling.appraisal.terms import split_head
from sterling.crypto.entropy import SecretRandom

EPSILONS = (0.15, 1.0)
DRAWS = 200


def head_only(model: nn.Module) -> nn.Module:
    """A copy with everything before the last linear layer frozen: the release values the head alone."""
    out = copy.deepcopy(model)
    body, _ = split_head(out)
    for p in body.parameters():
        p.requires_grad_(False)
    return out


def _methods(damping: float) -> dict[str, tuple[PrivateInfluence, bool]]:
    """name → (release, on the head alone?)."""
    out: dict[str, tuple[PrivateInfluence, bool]] = {
        "last_layer": (PrivateInfluence(clip=1.0, epsilon=1.0, damping=damping), True)
    }
    for curv in (GaussNewton(), Hessian()):
        for iters in (1, 5, 10, 50):
            cg = ConjugateGradient(tol=1e-3 if iters < 50 else 1e-6, max_iter=iters)
            mech = PrivateInfluence(clip=1.0, epsilon=1.0, damping=damping, curvature=curv, cg=cg)
            out[f"{curv.name}_cg{iters}"] = (mech, False)
    return out


def _noisy_spearman(truth: list[float], exact: tuple[float, ...], scale: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    noisy = np.asarray(exact)[None] + rng.laplace(0.0, scale, size=(DRAWS, len(exact)))
    return float(np.mean([spearmanr(truth, row)[0] for row in noisy]))


def mlp(seed: int, parts: int = 10) -> dict[str, Any]:
    s = base._split(seed)
    xtr, ytr, xva, yva = s
    owner = base._owners(np.random.default_rng(seed), len(xtr), parts)
    model = base._fit("mlp", xtr, ytr)
    ref = base._val_loss(model, xva, yva)
    truth = [
        base._val_loss(base._fit("mlp", xtr[k], ytr[k], init=model), xva, yva) - ref
        for k in (torch.from_numpy(owner != p) for p in range(parts))
    ]
    data = base._data(xtr, ytr, owner, parts, s)
    out: dict[str, Any] = {}
    for name, (mech, head) in _methods(base.ALPHA / len(xtr)).items():
        start = time.perf_counter()
        exact = mech.noiseless(head_only(model) if head else model, data).per_provider
        out[f"{name}_s"] = time.perf_counter() - start
        out[f"{name}_iterations"] = mech.cg.iterations
        out[f"{name}_noiseless"] = float(spearmanr(truth, exact)[0])
        for eps in EPSILONS:
            out[f"{name}_eps_{eps:g}"] = _noisy_spearman(truth, exact, mech.term_clip / eps, seed)
    return out


# ------------------------------------------------------------- the demo's CNN


def _cnn_data(fake: str, seed: int) -> tuple[AppraisalData, int]:
    from sterling.demo.fundus import FundusConfig, generate
    from sterling.demo.market import noise_like, partition, providers
    from sterling.demo.scenario import DEMO_LESION_SCALE
    from sterling.privacy.features import to_model_input

    config = FundusConfig(lesion_scale=DEMO_LESION_SCALE)
    pool, val = generate(3600, seed=seed, config=config), generate(360, seed=seed + 1, config=config)
    specs = [s for s in providers(6) if s.kind != "noise"]
    parts = partition(pool, specs, seed=seed)
    fake_rows = noise_like(pool, int(pool.schema.rows * 0.12), seed=seed + 7)
    features, labels = fake_rows.features, fake_rows.labels
    rng = np.random.default_rng(seed + 9)
    if fake == "shuffled":
        labels = rng.permutation(pool.labels[: len(labels)])
        features = pool.features[: len(labels)]
    elif fake == "pixels":
        features = rng.integers(0, 256, size=features.shape, dtype=np.uint8)
        labels = rng.integers(0, 5, size=len(labels))
    x = np.concatenate([*(p.features for p in parts), features])
    y = np.concatenate([*(p.labels for p in parts), labels])
    owner = np.concatenate(
        [np.full(p.schema.rows, i) for i, p in enumerate(parts)]
        + [np.full(len(y) - sum(p.schema.rows for p in parts), len(parts))]
    )
    shape = (3, 28, 28)
    data = AppraisalData(
        to_model_input(x, shape),
        torch.from_numpy(y.astype(np.int64)),
        owner,
        len(parts) + 1,
        to_model_input(val.features, shape),
        torch.from_numpy(val.labels.astype(np.int64)),
    )
    return data, len(parts)


def _cnn_model(data: AppraisalData, seed: int, epochs: int) -> nn.Module:
    """DP-SGD as the demo's CNN job: ε = 3, C = 0.5, momentum, learning rate 1."""
    from sterling.privacy import accountant
    from sterling.privacy.dpsgd import DPSGD
    from sterling.privacy.graph import template

    n = len(data.y)
    batch = int(min(512, max(32, n // 8)))
    q, steps = batch / n, epochs * round(n / batch)
    sigma = accountant.calibrate_noise(target_epsilon=3.0, sample_rate=q, steps=steps, delta=1e-5)
    engine = DPSGD(
        template("cnn", classes=5),
        (3, 28, 28),
        clipping_norm=0.5,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        learning_rate=1.0,
        optimizer="momentum",
        seed=seed,
        rng=SecretRandom.for_tests(seed),
        device="cpu",
    )
    engine.fit(data.x, data.y)
    return engine.model.eval()


def cnn(seed: int, epochs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fake in ("demo", "shuffled", "pixels"):
        data, k = _cnn_data(fake, seed)
        model = _cnn_model(data, seed, epochs)
        with torch.no_grad():
            out[f"{fake}_val_accuracy"] = float((model(data.x_val).argmax(1) == data.y_val).float().mean())
        for name, mech, m in (
            ("last_layer", PrivateInfluence(clip=0.5, epsilon=0.15), head_only(model)),
            ("network", PrivateInfluence(clip=0.5, epsilon=0.15), model),
        ):
            start = time.perf_counter()
            exact = np.asarray(mech.noiseless(m, data).per_provider)
            seconds = time.perf_counter() - start
            rng = np.random.default_rng(seed)
            # The release's discrete Laplace noise (scale 2c/ε on a grid of c/2¹⁶), drawn here as a
            # continuous Laplace of the same scale: the grid is far finer than the noise.
            noisy = exact[None] + rng.laplace(0.0, mech.noise_sd / np.sqrt(2), size=(DRAWS, len(exact)))
            key = f"{fake}_{name}"
            out[f"{key}_s"] = seconds
            out[f"{key}_method"] = mech.method
            out[f"{key}_iterations"] = mech.cg.iterations if name == "network" else None
            out[f"{key}_values"] = [round(float(v), 3) for v in exact]
            out[f"{key}_fake_lowest_and_negative"] = bool(exact[k] < 0 and int(np.argmin(exact)) == k)
            out[f"{key}_fake_lowest"] = bool(int(np.argmin(exact)) == k)
            out[f"{key}_eps_0.15_caught"] = float(np.mean((noisy[:, k] < 0) & (noisy.argmin(1) == k)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", nargs="?", default="all", choices=("mlp", "cnn", "all"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    if args.part in ("mlp", "all"):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small problems: one thread, as benchmarks/appraisal.py
        rows = [mlp(s) for s in range(args.seeds)]
        result["mlp"] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
        result["mlp_seeds"] = args.seeds
        torch.set_num_threads(threads)
    if args.part in ("cnn", "all"):
        result["cnn"] = cnn(0, args.epochs)
        result["cnn_threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
