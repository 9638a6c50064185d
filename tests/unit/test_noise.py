"""The enclave's secret randomness and the exact discrete noise its releases use."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from sterling.crypto.entropy import SecretRandom
from sterling.errors import UsageError
from sterling.privacy import noise
from sterling.privacy.noise import Grid, bernoulli_exp, discrete_laplace, discrete_laplace_pmf, release_sums


def test_streams_are_secret_repeatable_only_in_tests_and_split_by_label():
    assert SecretRandom.from_os().bytes(32) != SecretRandom.from_os().bytes(32)
    assert SecretRandom.for_tests(1).bytes(64) == SecretRandom.for_tests(1).bytes(64)
    assert SecretRandom.for_tests(1).bytes(64) != SecretRandom.for_tests(2).bytes(64)
    root = SecretRandom.for_tests(3)
    a, b = root.child("dpsgd.first").bytes(64), root.child("appraisal.values").bytes(64)
    assert a != b
    assert root.child("dpsgd.first").bytes(64) == a  # a child depends on the key and label only
    with pytest.raises(UsageError):
        SecretRandom(b"short")


def test_below_is_uniform_and_exact():
    rng = SecretRandom.for_tests(4)
    draws = Counter(rng.below(7) for _ in range(14_000))
    assert set(draws) == set(range(7))
    assert stats.chisquare(list(draws.values())).pvalue > 1e-4
    assert all(rng.below(1) == 0 for _ in range(10))
    big = (1 << 70) + 3
    assert all(0 <= rng.below(big) < big for _ in range(100))


def test_poisson_inclusion_is_decided_on_integers_even_at_tiny_rates():
    # float32 `rand() < q` rounds q to a 2^-24 grid: at q = 1e-7 that is 1.19e-7 (+19%).
    q = 1e-7
    float32_rate = float(np.float32(np.ceil(q * 2**24) / 2**24))
    assert float32_rate / q > 1.19
    # The integer threshold is exact to 2^-64 and never above q.
    threshold = int(Fraction(q) * 2**64)
    assert threshold / 2**64 <= q < (threshold + 1) / 2**64
    rng = SecretRandom.for_tests(5)
    mask = rng.bernoulli(2_000_000, 0.3)
    assert mask.dtype == torch.bool
    assert abs(float(mask.float().mean()) - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 2e6)
    assert bool(rng.bernoulli(10, 1.0).all())
    assert not bool(rng.bernoulli(10, 0.0).any())


def test_normals_have_unit_variance_gaussian_tails_and_are_four_summed():
    z = SecretRandom.for_tests(6).normal(400_000).numpy().astype(np.float64)
    assert abs(z.mean()) < 5 / math.sqrt(len(z))
    assert z.std() == pytest.approx(1.0, rel=0.01)
    assert stats.kurtosis(z) == pytest.approx(0.0, abs=0.05)
    assert stats.kstest(z[:50_000], "norm").pvalue > 1e-4


def test_bernoulli_exp_has_probability_exp_minus_gamma():
    rng = SecretRandom.for_tests(7)
    for gamma in (Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2)):
        hits = sum(bernoulli_exp(rng, gamma) for _ in range(6000))
        p = math.exp(-float(gamma))
        assert abs(hits / 6000 - p) < 5 * math.sqrt(p * (1 - p) / 6000) + 1e-9


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(3), Fraction(40, 7)])
def test_the_discrete_laplace_sampler_draws_the_exact_pmf(scale):
    rng = SecretRandom.for_tests(8)
    n = 20_000
    draws = Counter(discrete_laplace(rng, scale) for _ in range(n))
    ks = range(-8, 9)
    observed = [draws.get(k, 0) for k in ks] + [sum(v for k, v in draws.items() if abs(k) > 8)]
    expected = [n * discrete_laplace_pmf(k, scale) for k in ks]
    expected.append(n - sum(expected))
    keep = [i for i, e in enumerate(expected) if e > 5]
    obs, exp = np.array(observed)[keep], np.array(expected)[keep]
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-4
    assert np.std(list(draws.elements())) == pytest.approx(noise.discrete_laplace_sd(scale), rel=0.05)


def test_a_grid_rounds_each_term_so_a_sum_moves_by_at_most_its_width():
    grid = Grid(0.3)
    terms = np.array([-5.0, -0.3, -0.1, 0.0, 0.12345, 0.3, 9.0])
    steps = grid.quantize(terms)
    assert steps.dtype == np.int64
    assert steps.min() == -grid.units
    assert steps.max() == grid.units
    assert np.abs(steps * grid.step - np.clip(terms, -0.3, 0.3)).max() <= grid.step / 2 + 1e-15
    assert grid.width == 2 * grid.units
    assert Grid(10.0, lo=0, hi=1).width == Grid(10.0).units


def test_a_release_is_pure_epsilon_dp_on_the_grid_for_neighbouring_sums():
    # Two neighbouring integer sums (replace-one: they differ by up to the sensitivity). Every
    # output is an integer, reachable from both, and the ratio of its probabilities is at most e^ε.
    eps, sensitivity = 0.7, 4
    scale = Fraction(sensitivity) / noise.exact_epsilon(eps)
    for k in range(-30, 31):
        here, there = discrete_laplace_pmf(k, scale), discrete_laplace_pmf(k - sensitivity, scale)
        assert here > 0
        assert there > 0
        assert max(here / there, there / here) <= math.exp(eps) * (1 + 1e-12)
    rng = SecretRandom.for_tests(9)
    out = release_sums(rng, [10, 10 + sensitivity], epsilon=eps, sensitivity=sensitivity)
    assert all(isinstance(v, int) for v in out)
    assert noise.exact_epsilon(eps) <= eps
    with pytest.raises(UsageError):
        noise.exact_epsilon(1e-9)
