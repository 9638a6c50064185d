"""The private release over every parameter of a network (`appraisal.network_terms`, `release`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from sterling.appraisal import AppraisalData
from sterling.appraisal.network_terms import (
    GaussNewton,
    Hessian,
    _vmap_norms_and_dots,
    clipped_dots,
    direction,
)
from sterling.appraisal.release import PrivateInfluence
from sterling.appraisal.solvers import ConjugateGradient, solve_direct
from sterling.appraisal.terms import F64, FullTerms, loss_derivatives
from sterling.crypto.entropy import SecretRandom
from sterling.privacy.dpsgd import build_module
from sterling.privacy.graph import template

LOSS = "softmax_cross_entropy"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny problems: one thread (two threads on a busy two-core machine made these tests 5× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cnn(seed: int, size: int = 6) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """The demo's CNN template on tiny images: at 6×6 the first convolution takes DP-SGD's explicit
    per-example rule and the second (3×3 after pooling) and the head its ghost rule."""
    torch.manual_seed(seed)
    model = build_module(template("cnn", classes=3), (3, size, size)).eval()
    return model, torch.randn(24, 3, size, size), torch.randint(0, 3, (24,))


def _mlp(seed: int, d: int = 6) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, 3))


def test_full_terms_match_per_example_gradients_clipped_on_a_tiny_cnn() -> None:
    model, x, y = _cnn(0)
    full = FullTerms(model, x, y, LOSS)
    g = full.gradients(0, full.n)  # brute force: vmap(grad), (n, P)
    v = torch.randn(full.size, dtype=F64, generator=torch.Generator().manual_seed(1))
    norms = g.norm(dim=1)
    clip = float(norms.median())  # about half the rows clipped
    clipped = g * torch.clamp(clip / norms, max=1.0)[:, None]
    brute = clipped @ v
    assert 0 < int((norms > clip).sum()) < len(norms)
    got = clipped_dots(model, x, y, LOSS, v, clip=clip, chunk=10)
    np.testing.assert_allclose(got.numpy(), brute.numpy(), rtol=1e-5, atol=1e-5 * float(brute.abs().max()))
    # The fallback for layers DP-SGD has no rule for gives the same norms and products.
    n2, d2 = _vmap_norms_and_dots(full.model, x[:8], y[:8], LOSS, v, 5)
    np.testing.assert_allclose(n2.numpy(), norms[:8].numpy(), rtol=1e-10)
    np.testing.assert_allclose(d2.numpy(), (g[:8] @ v).numpy(), rtol=1e-8, atol=1e-10)


def _gauss_newton_dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    terms = FullTerms(model, x, y, LOSS)

    def logits(theta: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(terms.model, terms._params(theta), (terms.x,))
        return out

    jac = jacrev(logits)(terms.theta)  # (n, K, P)
    _, _, a = loss_derivatives(logits(terms.theta), y, LOSS)
    return torch.einsum("nkp,nkl,nlq->pq", jac, a, jac) / len(x)


def test_cg_direction_matches_a_dense_solve_on_a_tiny_net() -> None:
    model = _mlp(2)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    val = FullTerms(model, x, y, LOSS)
    cg = ConjugateGradient(tol=1e-12, max_iter=500)
    # The Hessian need not be positive definite off a minimum: a damping that makes H + λI so.
    lam = 1.0 + max(0.0, -float(torch.linalg.eigvalsh(val.hessian())[0]))
    got = direction(model, x, y, LOSS, damping=lam, curvature=Hessian(), solve=cg.solve)
    want = solve_direct(val.hessian(), lam, val.mean_gradient())
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    got = direction(model, x, y, LOSS, damping=0.01, curvature=GaussNewton(), solve=cg.solve)
    want = solve_direct(_gauss_newton_dense(model, x, y), 0.01, val.mean_gradient())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    assert float(got.norm()) > 0


def _blobs(seed: int, n: int, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian classes, separable but overlapping."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, d, generator=torch.Generator().manual_seed(99)) * 1.5
    y = torch.randint(0, 3, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y


def _market(seed: int) -> tuple[nn.Sequential, AppraisalData]:
    """Four honest providers of 60 rows and one whose 60 rows carry random labels; an MLP fitted on all."""
    x, y = _blobs(seed, 300)
    fake = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(seed + 1))
    y = torch.cat([y[:240], fake])
    owner = np.repeat(np.arange(5), 60)
    xv, yv = _blobs(seed + 2, 200)
    model = _mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), AppraisalData(x, y, owner, 5, xv, yv, LOSS)


def test_one_row_moves_only_its_providers_value_and_by_at_most_c() -> None:
    model, data = _market(3)
    mech = PrivateInfluence(clip=0.5, epsilon=1.0)
    before = np.array(mech.noiseless(model, data).per_provider)
    c = mech.term_clip
    assert 0 < c <= 0.5
    # Add to provider 0 a row with a huge gradient (far out, wrong label); remove provider 3's first row.
    far = torch.full((1, 6), 40.0)
    keep = torch.ones(len(data.y), dtype=torch.bool)
    keep[180] = False
    changed = AppraisalData(
        torch.cat([data.x[keep], far]),
        torch.cat([data.y[keep], torch.tensor([2])]),
        np.concatenate([data.owner[keep.numpy()], [0]]),
        5,
        data.x_val,
        data.y_val,
        LOSS,
    )
    after = np.array(mech.noiseless(model, changed).per_provider)
    assert mech.term_clip == c  # the bound comes from the consumer's rows alone
    moved = np.abs(after - before)
    assert moved[0] <= c + 1e-12
    assert moved[3] <= c + 1e-12
    assert moved[0] > 0
    assert moved[3] > 0
    np.testing.assert_allclose(after[[1, 2, 4]], before[[1, 2, 4]], rtol=0, atol=1e-12)


def test_the_released_method_names_the_network_method_and_logistic_regression_keeps_its_own() -> None:
    model, data = _market(4)
    released = PrivateInfluence(clip=0.5, epsilon=0.5, rng=SecretRandom.for_tests(0)).fit(model, data)
    assert released.method.startswith("cg_influence[gauss_newton]+discrete_laplace(")
    assert released.per_example is None
    assert released.epsilon == 0.5
    hessian = PrivateInfluence(clip=0.5, epsilon=0.5, curvature=Hessian()).noiseless(model, data)
    assert hessian.method.startswith("cg_influence[hessian]+discrete_laplace(")
    head = PrivateInfluence(clip=0.5, epsilon=0.5, head_only=True).fit(model, data)
    assert head.method.startswith("influence+discrete_laplace(")  # the enclave's choice for CNNs
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    assert (
        PrivateInfluence(clip=0.5, epsilon=0.5)
        .fit(linear, data)
        .method.startswith("influence+discrete_laplace(")
    )


def test_a_random_label_provider_comes_out_below_every_honest_one() -> None:
    for seed in (5, 6):
        model, data = _market(seed)
        values = PrivateInfluence(clip=1.0, epsilon=1.0).noiseless(model, data).per_provider
        honest, fake = values[:4], values[4]
        assert fake < 0 < min(honest), values
        assert min(honest) - fake > 0.5 * (max(honest) - min(honest)), values


def test_the_cnn_release_runs_end_to_end_with_chunks() -> None:
    model, x, y = _cnn(7, 8)
    data = AppraisalData(x, y, np.arange(len(y)) % 3, 3, x[:8], y[:8], LOSS)
    mech = PrivateInfluence(clip=1.0, epsilon=1.0, chunk=8, cg=ConjugateGradient(tol=1e-3, max_iter=3))
    result = mech.noiseless(model, data)
    assert result.per_example is not None
    assert np.abs(result.per_example).max() <= mech.term_clip + 1e-12
    assert 1 <= mech.cg.iterations <= 3
