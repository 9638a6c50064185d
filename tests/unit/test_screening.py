"""Screening providers' labels against the DP model: fakes fail, honest rows pass, releases are bounded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sterling.appraisal import AppraisalData
from sterling.appraisal.screening import (
    FALSE_FLAG_RATE,
    GRID,
    SCORE_CLIP,
    LabelAgreement,
    Screening,
    noise_margin,
)
from sterling.crypto.entropy import SecretRandom
from sterling.errors import UsageError
from sterling.privacy.mechanisms import screening_release
from sterling.privacy.noise import discrete_laplace_sd

WEIGHTS = np.array([1.5, -2.0, 1.0, 0.5, -1.0, 2.0])


def _rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, len(WEIGHTS))).astype(np.float32)
    y = (x @ WEIGHTS + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return x, y


def _market(seed: int) -> tuple[torch.nn.Module, AppraisalData]:
    """Three honest providers, one with shuffled labels, one with flipped labels; a model fitted to all."""
    rng = np.random.default_rng(seed)
    xs, ys, owner = [], [], []
    for p, kind in enumerate(["honest", "honest", "honest", "shuffled", "flipped"]):
        x, y = _rows(int(rng.integers(150, 300)), rng)
        if kind == "shuffled":
            y = rng.permutation(y)
        elif kind == "flipped":
            y = 1 - y
        xs.append(x)
        ys.append(y)
        owner.append(np.full(len(y), p))
    x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
    xv, yv = _rows(200, rng)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(len(WEIGHTS), 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    data = AppraisalData(
        x=x,
        y=y,
        owner=np.concatenate(owner),
        parts=5,
        x_val=torch.from_numpy(xv),
        y_val=torch.from_numpy(yv),
    )
    return model, data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_and_flipped_labels_are_flagged_and_honest_ones_are_not(seed):
    model, data = _market(seed)
    screening = LabelAgreement(epsilon=None).fit(model, data)
    assert screening.flagged() == (False, False, False, True, True)
    means = screening.means()
    assert min(means[:3]) > screening.reference_mean - 0.5
    assert means[4] < means[3] < 0 < min(means[:3])  # backwards is worse than random, random worse than prior


def test_replacing_one_row_moves_only_its_providers_sum_and_by_at_most_twice_the_clip():
    model, data = _market(3)
    before = LabelAgreement(epsilon=None).fit(model, data).sums
    for row in (0, int(np.flatnonzero(data.owner == 4)[0])):
        x, y = data.x.clone(), data.y.clone()
        x[row] = -x[row]  # another person's row in its place: the features reversed, the label kept
        after = LabelAgreement(epsilon=None).fit(model, replace(data, x=x, y=y)).sums
        moved = [abs(a - b) for a, b in zip(after, before, strict=True)]
        p = int(data.owner[row])
        assert 0 < moved[p] <= 2 * SCORE_CLIP  # replace-one: from −B to B at most
        assert all(m == 0 for q, m in enumerate(moved) if q != p)


def test_the_release_is_on_the_grid_with_discrete_laplace_noise_of_scale_twice_the_clip_over_epsilon():
    model, data = _market(4)
    exact = np.array(LabelAgreement(epsilon=None).fit(model, data).sums)
    rng = SecretRandom.for_tests(7)
    draws = np.array([LabelAgreement(epsilon=0.5, rng=rng).fit(model, data).sums for _ in range(1500)])
    # Every released sum is a whole number of grid steps: the rows' rounded scores plus integer noise.
    steps = draws / GRID.step
    assert np.array_equal(steps, np.round(steps))
    noise = draws - exact
    scale = 2 * SCORE_CLIP / 0.5  # replace-one sensitivity 2B
    assert np.abs(noise.mean(axis=0)).max() < 0.3 * scale
    sd = discrete_laplace_sd(screening_release(0.5).scale) * GRID.step
    assert sd == pytest.approx(scale * np.sqrt(2), rel=1e-3)
    assert noise.std(axis=0) == pytest.approx(np.full(5, sd), rel=0.12)
    released = LabelAgreement(epsilon=0.5, rng=rng).fit(model, data)
    assert released.margin == noise_margin(screening_release(0.5))
    assert "discrete_laplace" in released.method


def test_screening_needs_the_consumers_own_rows():
    model, data = _market(5)
    empty = AppraisalData(
        x=data.x, y=data.y, owner=data.owner, parts=5, x_val=data.x_val[:0], y_val=data.y_val[:0]
    )
    with pytest.raises(UsageError, match="validation"):
        LabelAgreement(epsilon=0.5).fit(model, empty)
    with pytest.raises(UsageError, match="epsilon"):
        LabelAgreement(epsilon=0.0)


def test_the_noise_alone_flags_an_honest_provider_at_most_at_the_false_flag_rate():
    # A provider whose rows score exactly the buyer's mean, with no sampling spread (σ = 0):
    # only the noise can flag it, and it should at most at the rate α the margin is set for. The
    # noise is simulated independently of Sterling's sampler: a discrete Laplace is the difference
    # of two geometric variables with success 1 − exp(−1/t).
    rows, release, draws = 99, screening_release(0.05), 400_000
    p = np.exp(-1 / float(release.scale))
    gen = np.random.default_rng(11)
    noise = (gen.geometric(1 - p, draws) - gen.geometric(1 - p, draws)) * GRID.step
    margin = noise_margin(release)
    flagged = [
        Screening("t", (0.2 * rows + z,), (rows,), 0.2, 0.0, margin, 0.05).flagged()[0] for z in noise[:2000]
    ]
    assert not any(flagged)
    threshold = Screening("t", (0.0,), (rows,), 0.2, 0.0, margin, 0.05).thresholds()[0]
    rate = float(np.mean(0.2 + noise / rows < threshold))
    assert rate <= FALSE_FLAG_RATE * 1.35
    assert rate == pytest.approx(FALSE_FLAG_RATE, rel=0.35)
    # Two standard deviations of noise, the margin before, flag one honest provider in 34.
    old = float(np.mean(noise < -2 * noise.std()))
    assert 0.02 < old < 0.04


def test_fakes_are_still_flagged_through_the_noise_and_honest_providers_are_not():
    model, data = _market(5)
    rng = SecretRandom.for_tests(12)
    # ε 2: replace-one doubles the sensitivity, so this is the noise ε 1 once had (at ε 1 the
    # shuffled provider of 150-300 rows is flagged in 80% of releases).
    flags = np.array([LabelAgreement(epsilon=2.0, rng=rng).fit(model, data).flagged() for _ in range(300)])
    assert not flags[:, :3].any()
    assert flags[:, 3:].mean(axis=0).min() > 0.95
