"""A one-run privacy audit (Steinke, Nasr & Jagielski, 2023) of the real DP-SGD engine.

m canary examples are each included in the training data with probability
1/2. Each canary lives in a feature coordinate no other example uses, so
its influence on the trained weights can be scored; the auditor guesses the
k highest-scoring canaries were in and the k lowest were out. For an ε-DP
algorithm, the number of correct guesses is stochastically dominated by
Binomial(2k, e^ε / (1 + e^ε)), which yields an empirical lower bound on ε at
95% confidence. The real engine must stay below the ε it claims; an engine
broken on purpose (noise scaled by 0.25), built only here, must exceed it,
which shows the audit has the power to catch a real bug.

A canary is in or out: the audit's neighbours add or remove one row. So the
ε claimed here is the add/remove ε of the run (dp-accounting's
ADD_OR_REMOVE_ONE), not the replace-one ε Sterling charges (which is larger;
tests/security/test_replay_audit.py audits that one).
"""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting import pld
from scipy import stats

from sterling.crypto.entropy import SecretRandom
from sterling.privacy.accountant import DpSgdParams
from sterling.privacy.dpsgd import DPSGD
from sterling.privacy.graph import template

CLAIMED, DELTA, Q, STEPS, M, K = 2.0, 1e-5, 0.5, 20, 1000, 100


def add_remove_sigma(epsilon: float) -> float:
    """The noise multiplier whose add/remove PLD ε is `epsilon` for this audit's run."""
    return float(
        dpa.calibrate_dp_mechanism(
            lambda: pld.PLDAccountant(dpa.NeighboringRelation.ADD_OR_REMOVE_ONE),
            lambda s: DpSgdParams(s, Q, STEPS, DELTA).event(),
            epsilon,
            DELTA,
            bracket_interval=dpa.ExplicitBracketInterval(0.3, 20.0),
            tol=1e-3,
        )
    )


def epsilon_lower_bound(guesses: int, correct: int, confidence: float = 0.95) -> float:
    """The largest ε under which `correct` of `guesses` would be less likely than 1 - confidence."""

    def tail(eps: float) -> float:
        return float(stats.binom.sf(correct - 1, guesses, math.exp(eps) / (1 + math.exp(eps))))

    beta = 1 - confidence
    if tail(0.0) > beta:
        return 0.0
    lo, hi = 0.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) <= beta else (lo, mid)
    return lo


class BrokenDPSGD(DPSGD):
    """A deliberately wrong engine: a quarter of the noise the accountant assumed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sigma *= 0.25


def audit(engine: type[DPSGD], seed: int) -> tuple[float, int]:
    rng = np.random.default_rng(seed)
    d, n = 5, 200
    real = rng.normal(size=(n, d))
    real_y = (real[:, 0] > 0).astype(int)
    included = rng.random(M) < 0.5
    canaries = np.zeros((M, d + M))
    canaries[np.arange(M), d + np.arange(M)] = 100.0
    canary_y = np.arange(M) % 2
    x = np.vstack([np.hstack([real, np.zeros((n, M))]), canaries[included]])
    y = np.concatenate([real_y, canary_y[included]])
    sigma = add_remove_sigma(CLAIMED) * 1.001
    trainer = engine(
        template("logistic_regression", classes=2),
        (d + M,),
        clipping_norm=1.0,
        noise_multiplier=sigma,
        sample_rate=Q,
        steps=STEPS,
        learning_rate=0.1,
        seed=seed,
        rng=SecretRandom.for_tests(seed),
    )
    before = trainer.model[-1].weight.detach().clone()
    trainer.fit(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    moved = (trainer.model[-1].weight.detach() - before).numpy()
    cols = d + np.arange(M)
    score = moved[canary_y, cols] - moved[1 - canary_y, cols]  # how far each canary's label was pushed
    order = np.argsort(score)
    correct = int(included[order[-K:]].sum() + (~included[order[:K]]).sum())
    return epsilon_lower_bound(2 * K, correct), correct


@pytest.mark.parametrize("seed", [0, 1])
def test_the_real_engine_stays_below_its_claimed_epsilon(seed):
    lower, correct = audit(DPSGD, seed)
    assert lower < CLAIMED, (lower, correct)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_broken_engine_is_caught(seed):
    lower, correct = audit(BrokenDPSGD, seed)
    assert lower > CLAIMED, (lower, correct)


def test_lower_bound_arithmetic():
    assert epsilon_lower_bound(200, 100) == 0.0  # chance level proves nothing
    assert epsilon_lower_bound(200, 200) > epsilon_lower_bound(200, 180) > 1.0
