"""DP-SGD: the noise, the clipping and the sampling are what the accountant assumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch.utils._python_dispatch import TorchDispatchMode

from sterling.crypto.entropy import SecretRandom
from sterling.privacy import oblivious
from sterling.privacy.accountant import DpSgdParams, calibrate_noise, pld_epsilon
from sterling.privacy.dpsgd import DEFAULT_OVERFLOW_PER_STEP, DPSGD, max_steps_within
from sterling.privacy.graph import template


def trainer(family="logistic_regression", shape=(4,), classes=2, **kw) -> DPSGD:
    """An engine whose secret stream is the test stream of its `seed` (so two engines can agree)."""
    base = {
        "clipping_norm": 1.0,
        "noise_multiplier": 1.0,
        "sample_rate": 0.5,
        "steps": 1,
        "learning_rate": 1.0,
    }
    kw.setdefault("rng", SecretRandom.for_tests(kw.get("seed", 0)))
    return DPSGD(template(family, classes=classes), shape, **{**base, **kw})


def capacity(n: int, q: float) -> int:
    return oblivious.capacity(n, q, DEFAULT_OVERFLOW_PER_STEP)


def test_noise_has_the_promised_standard_deviation():
    # With all-zero inputs the weight gradient of logistic regression is exactly zero,
    # so with plain SGD at lr 1 the weight update is the noise alone: sd = σ·C / (qN).
    tr = trainer(shape=(50,), noise_multiplier=2.0, clipping_norm=0.5, sample_rate=0.5, seed=1)
    x, y = torch.zeros(8, 50), torch.zeros(8, dtype=torch.long)
    weight = next(tr.model.parameters())
    draws = []
    for _ in range(40):
        before = weight.detach().clone()
        tr.step(x, y)
        draws.append((before - weight.detach()).flatten())
    noise = torch.cat(draws).numpy()
    expected = 2.0 * 0.5 / (0.5 * 8)
    assert abs(noise.std() / expected - 1) < 0.05
    assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)
    assert stats.normaltest(noise).pvalue > 1e-4


@pytest.mark.parametrize("family", ["logistic_regression", "mlp"])
def test_every_per_example_gradient_is_clipped(family):
    clipped = trainer(family=family, shape=(6,), clipping_norm=0.25, seed=4)
    raw = trainer(family=family, shape=(6,), clipping_norm=1e9, seed=4)  # same weights, no clipping
    raw.model.load_state_dict(clipped.model.state_dict())
    x = torch.randn(32, 6) * 20  # large inputs: most raw gradients far above the norm
    y = torch.randint(0, 2, (32,))
    above = 0
    for i in range(len(x)):
        one = (x[i : i + 1], y[i : i + 1], torch.ones(1))
        c_norm = torch.sqrt(sum(g.pow(2).sum() for g in clipped._clipped_sum(*one)[0]))
        r_norm = torch.sqrt(sum(g.pow(2).sum() for g in raw._clipped_sum(*one)[0]))
        assert c_norm == pytest.approx(min(0.25, float(r_norm)), rel=1e-4, abs=1e-7)
        above += int(r_norm > 0.25)
    assert above >= 8  # the test did exercise clipping


def test_closed_form_matches_vmap_for_logistic_regression():
    tr = trainer(shape=(5,), classes=3, clipping_norm=0.7)
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    closed, _ = tr._clipped_sum(x, y, torch.ones(20))
    tr.closed_form = False
    generic, _ = tr._clipped_sum(x, y, torch.ones(20))
    for a, b in zip(closed, generic, strict=True):
        assert torch.allclose(a.reshape(b.shape), b, atol=1e-5)


def test_batches_are_poisson_not_shuffled():
    tr = trainer(sample_rate=0.1, seed=3)
    n, draws = 200, 400
    masks = torch.stack([tr._sample(n) for _ in range(draws)]).numpy()
    sizes = masks.sum(axis=1)
    # Batch sizes follow Binomial(n, q); a shuffle into fixed batches would give one size.
    edges = np.arange(14, 27)  # bins: ≤14, 15, ..., 26, ≥27
    observed = np.array([(sizes <= 14).sum(), *[(sizes == k).sum() for k in edges[1:]], (sizes >= 27).sum()])
    dist = stats.binom(n, 0.1)
    probs = np.array([dist.cdf(14), *[dist.pmf(k) for k in edges[1:]], dist.sf(26)])
    assert stats.chisquare(observed, probs * draws).pvalue > 1e-3
    assert 3.0 < sizes.std() < 5.5  # sqrt(200 · 0.1 · 0.9) ≈ 4.24
    # Each example is included independently with probability q, step after step.
    assert abs(masks.mean() - 0.1) < 0.01
    assert abs(np.corrcoef(masks[:, 0], masks[:, 1])[0, 1]) < 0.15
    per_row = masks.mean(axis=0)
    assert per_row.min() > 0.03
    assert per_row.max() < 0.18


class Trace(TorchDispatchMode):
    """Records every operation: its name, its tensors' shapes, and the values of index tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        def describe(a):
            if isinstance(a, torch.Tensor):
                if a.dtype in (torch.int64, torch.int32) and "index" in func.__name__:
                    return ("index", tuple(a.tolist()))
                return ("tensor", tuple(a.shape), str(a.dtype))
            if isinstance(a, (list, tuple)):
                return tuple(describe(x) for x in a)
            return type(a).__name__

        self.ops.append((func.__name__, describe(args)))
        return func(*args, **(kwargs or {}))


def trace_step(
    oblivious: bool, data_seed: int, sample_seed: int, family: str = "cnn", rows: int = 64
) -> list[tuple]:
    g = torch.Generator().manual_seed(data_seed)
    x, y = torch.randn(rows, 3, 8, 8, generator=g), torch.randint(0, 3, (rows,), generator=g)
    tr = trainer(family, shape=(3, 8, 8), classes=3, sample_rate=0.3, oblivious=oblivious, seed=sample_seed)
    with Trace() as t:
        tr.step(x, y)
    return t.ops


@pytest.mark.parametrize(
    ("family", "rows"),
    [("cnn", 64), ("cnn", 600), ("logistic_regression", 64)],  # 600 rows: the two-stage gather
)
def test_oblivious_step_trace_is_identical_across_data_and_samples(family, rows):
    a = trace_step(True, data_seed=1, sample_seed=10, family=family, rows=rows)
    b = trace_step(True, data_seed=2, sample_seed=20, family=family, rows=rows)
    assert len(a) > 20
    assert a == b
    # The ordinary step's trace does depend on which rows were sampled: the test can tell.
    assert trace_step(False, 1, 10, family, rows) != trace_step(False, 2, 20, family, rows)


@pytest.mark.parametrize(("n", "q"), [(64, 0.3), (600, 0.3), (2048, 1 / 8), (1000, 0.02)])
def test_oblivious_gather_takes_the_sampled_rows_in_order(n, q):
    p = oblivious.plan(n, q, steps=1, failure=DEFAULT_OVERFLOW_PER_STEP)
    assert p.capacity in (capacity(n, q), oblivious.capacity(n, q, DEFAULT_OVERFLOW_PER_STEP / 2))
    if n >= 600:
        assert p.blocks > 1  # the two-stage gather is exercised
    g = torch.Generator().manual_seed(n)
    rows = torch.randn(p.padded, 7, generator=g)
    rows[n:] = 0
    for _ in range(3):
        mask = torch.rand(n, generator=g) < q
        picked, weight = oblivious.gather(p, rows, mask)
        k = int(mask.sum())
        assert picked.shape == (p.capacity, 7)
        assert torch.equal(picked[:k], rows[:n][mask])  # exact: each slot sums one row and zeros
        assert not picked[k:].any()
        assert torch.equal(weight, (torch.arange(p.capacity) < k).float())


def test_oblivious_gather_drops_a_full_blocks_surplus_and_weights_only_real_rows():
    p = oblivious.plan(2048, 1 / 8, steps=1, failure=DEFAULT_OVERFLOW_PER_STEP)
    rows = torch.arange(1, 2049, dtype=torch.float32)[:, None]
    mask = torch.zeros(2048, dtype=torch.bool)
    mask[:100] = True  # 100 rows in the first block, whose capacity is smaller
    picked, weight = oblivious.gather(p, rows, mask)
    kept = int(weight.sum())
    assert kept == p.block_capacity < 100
    assert torch.equal(picked[:kept, 0], torch.arange(1, kept + 1, dtype=torch.float32))
    assert not picked[kept:].any()


def test_oblivious_and_ordinary_steps_compute_the_same_update():
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    plain, obl = trainer(seed=5, sample_rate=0.3), trainer(seed=5, sample_rate=0.3, oblivious=True)
    plain.step(x, y)
    obl.step(x, y)
    for a, b in zip(plain.model.parameters(), obl.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert capacity(64, 0.3) < 64


def test_budget_filter_stops_before_overspending():
    sigma, q, delta = 1.0, 0.1, 1e-5
    limit = pld_epsilon(DpSgdParams(sigma, q, 50, delta))
    assert max_steps_within(limit, noise_multiplier=sigma, sample_rate=q, delta=delta, upper=500) == 50
    tr = trainer(shape=(4,), noise_multiplier=sigma, sample_rate=q, steps=500)
    result = tr.fit(torch.randn(100, 4), torch.randint(0, 2, (100,)), epsilon_limit=limit, delta=delta)
    assert result.steps == 50
    assert result.stopped_by_budget
    assert pld_epsilon(DpSgdParams(sigma, q, result.steps, delta)) <= limit


def test_dp_logistic_regression_reaches_95_percent_at_epsilon_1():
    # ε = 1 under replace-one adjacency. The add/remove accounting this engine once used reached
    # 96.5% with batches of 64 for 15 epochs; under replace-one that recipe needs σ 10.9 and
    # reaches 93%; larger batches for fewer epochs (σ 8.9) win it back (median 96.5%, 5 seeds).
    X, y = load_breast_cancer(return_X_y=True)
    accs = []
    for seed in range(5):
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
        scaler = StandardScaler().fit(Xtr)
        Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
        q = 128 / len(Xtr)
        steps = int(np.ceil(5 / q))
        sigma = calibrate_noise(target_epsilon=1.0, sample_rate=q, steps=steps, delta=1e-5)
        assert pld_epsilon(DpSgdParams(sigma, q, steps, 1e-5)) <= 1.0
        tr = trainer(
            shape=(30,), noise_multiplier=sigma, sample_rate=q, steps=steps, learning_rate=1.0, seed=seed
        )
        tr.fit(torch.tensor(Xtr, dtype=torch.float32), torch.tensor(ytr))
        with torch.no_grad():
            pred = tr.model(torch.tensor(Xte, dtype=torch.float32)).argmax(1).numpy()
        accs.append((pred == yte).mean())
    assert np.median(accs) >= 0.95, accs


@pytest.mark.parametrize(
    ("layers", "shape"),
    [
        (template("cnn", classes=4).model_dump(mode="json")["layers"], (3, 12, 12)),
        (
            [
                {"type": "linear", "out": 8},
                {"type": "layernorm"},
                {"type": "gelu"},
                {"type": "linear", "out": 4},
            ],
            (6,),
        ),
    ],
)
def test_batched_per_example_gradients_match_vmap(layers, shape):
    from sterling.privacy.graph import ModelGraph

    tr = DPSGD(
        ModelGraph.model_validate({"layers": layers}),
        shape,
        clipping_norm=0.5,
        noise_multiplier=1.0,
        sample_rate=0.5,
        steps=1,
        learning_rate=0.1,
    )
    assert tr.batched
    x, y = torch.randn(24, *shape), torch.randint(0, 4, (24,))
    weight = (torch.rand(24) < 0.7).float()
    batched, loss_a = tr._clipped_sum(x, y, weight)
    tr.batched = False
    reference, loss_b = tr._clipped_sum(x, y, weight)
    assert loss_a == pytest.approx(loss_b)
    for a, b in zip(batched, reference, strict=True):
        assert torch.allclose(a.reshape(b.shape), b, atol=1e-5, rtol=1e-4)


# Explicit rule on a channels-last 3-channel conv, fused ReLU + pool, ghost rule on the second conv.
MIXED_CNN = [
    {"type": "conv2d", "out": 8, "kernel": 3, "padding": 1},
    {"type": "groupnorm", "groups": 2},
    {"type": "relu"},
    {"type": "avgpool", "kernel": 2},
    {"type": "conv2d", "out": 16, "kernel": 5},
    {"type": "groupnorm", "groups": 4},
    {"type": "tanh"},
    {"type": "flatten"},
    {"type": "linear", "out": 3},
]


@pytest.mark.parametrize(
    ("layers", "shape"),
    [(template("cnn", classes=3).model_dump(mode="json")["layers"], (3, 12, 12)), (MIXED_CNN, (3, 10, 10))],
)
def test_fast_clipped_sum_matches_vmap_grad_to_1e_5(layers, shape):
    from torch.func import functional_call, grad, vmap

    from sterling.privacy import persample
    from sterling.privacy.graph import ModelGraph

    tr = DPSGD(
        ModelGraph.model_validate({"layers": layers}),
        shape,
        clipping_norm=0.3,
        noise_multiplier=1.0,
        sample_rate=0.5,
        steps=1,
        learning_rate=0.1,
    )
    convs = [m for m in tr.model if isinstance(m, torch.nn.Conv2d)]
    if layers is MIXED_CNN:  # the test does take both rules: explicit, then ghost norm
        assert [
            persample._conv_costs(m, torch.zeros(1, m.out_channels, *s))
            for m, s in zip(convs, [(10, 10), (1, 1)], strict=True)
        ] == [(10 * 10 * 8 * 27, 2 * 100 * 100 * 35), (16 * 200, 2 * 216)]
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, *shape, generator=g) * 2, torch.randint(0, 3, (40,), generator=g)
    weight = (torch.rand(40, generator=g) < 0.6).float()
    fast, _ = tr._clipped_sum(x, y, weight)

    # The reference: every example's gradient from vmap(grad), clipped and summed explicitly.
    params = {k: v.detach() for k, v in tr.model.named_parameters()}

    def loss_one(p, xi, yi):
        return torch.nn.functional.cross_entropy(functional_call(tr.model, p, (xi[None],)), yi[None])

    per = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(v.reshape(len(x), -1).pow(2).sum(dim=1) for v in per.values()))
    assert (norms > 0.3).sum() >= 10  # clipping is active for many examples
    factor = torch.clamp(0.3 / norms, max=1.0) * weight
    for got, want in zip(fast, per.values(), strict=True):
        want = torch.einsum("b,b...->...", factor, want)
        assert float((got.reshape(want.shape) - want).norm() / want.norm()) < 1e-5


def test_fused_relu_average_pool_matches_pytorch():
    from sterling.privacy.persample import _ReluAvgPool

    for shape, k in [((4, 3, 28, 28), 2), ((2, 3, 7, 9), 2), ((2, 2, 9, 9), 3)]:
        a = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        want = torch.nn.functional.avg_pool2d(torch.relu(a), k)
        assert torch.allclose(_ReluAvgPool.apply(a, k), want)
        assert torch.autograd.gradcheck(lambda t, k=k: _ReluAvgPool.apply(t, k), (a,))


@pytest.mark.parametrize(("shape", "k"), [((4, 3, 28, 28), 2), ((2, 3, 7, 9), 2), ((2, 2, 9, 9), 3)])
def test_fast_average_pool_matches_pytorch(shape, k):
    from sterling.privacy.persample import _AvgPool

    a = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(_AvgPool.apply(a, k), torch.nn.functional.avg_pool2d(a, k))
    assert torch.autograd.gradcheck(lambda t: _AvgPool.apply(t, k), (a,))


@pytest.mark.parametrize("n", [100, 2048, 2100])
def test_blocked_products_match_plain_ones(n):
    from sterling.privacy.dpsgd import _blocked, _weighted_rows

    a, s, w = torch.randn(n, 50), torch.randn(n, 5), torch.randn(5, 50)
    assert torch.allclose(_blocked(a, lambda t: t @ w.T), a @ w.T, atol=1e-4)
    assert torch.allclose(_weighted_rows(s, a), s.T @ a, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(
    ("family", "x", "classes"),
    [
        ("logistic_regression", torch.randn(1100, 4), 2),  # tall enough for the blocked products
        ("cnn", torch.randn(64, 3, 8, 8), 3),  # gathered through one selection matrix
        ("cnn", torch.randn(600, 3, 8, 8), 3),  # gathered in two stages, with padding
    ],
)
def test_oblivious_and_ordinary_steps_agree_for_every_path(family, x, classes):
    y = torch.randint(0, classes, (len(x),))
    kw = {"family": family, "shape": tuple(x.shape[1:]), "classes": classes, "seed": 7, "sample_rate": 0.3}
    plain, obl = trainer(**kw), trainer(**kw, oblivious=True)
    obl.model.load_state_dict(plain.model.state_dict())
    for _ in range(2):
        a, b = plain.step(x, y), obl.step(x, y)
        assert a.batch_size == b.batch_size
        assert a.loss == pytest.approx(b.loss, rel=1e-4)
    for p, q in zip(plain.model.parameters(), obl.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_per_dataset_values_follow_in_place_changes():
    tr = trainer(shape=(4,))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    first = tr._dataset(x, y)["sq"].clone()
    assert tr._dataset(x, y)["sq"] is tr._dataset(x, y)["sq"]  # computed once
    x.mul_(2)
    assert torch.allclose(tr._dataset(x, y)["sq"], 4 * first)
    obl = trainer(family="cnn", shape=(3, 8, 8), classes=3, oblivious=True)
    xi, yi = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    assert torch.equal(obl._dataset(xi, yi)["xy"][:, 192], yi.float())
    yi.fill_(2)
    assert torch.equal(obl._dataset(xi, yi)["xy"][:, 192], torch.full((8,), 2.0))
