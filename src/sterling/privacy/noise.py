"""Exact discrete noise for the values that leave the enclave.

A Laplace release computed in floating point is not the mechanism its proof
is about: the doubles numpy's `laplace` can return, shifted by the true
value, form a set that depends on the value, and an output the neighbouring
dataset cannot produce gives that dataset away (Mironov 2012). Sterling's
releases are therefore integers:

1. each row's contribution, bounded to [lo, hi], is rounded to a grid of
   `units` steps per unit of bound (`Grid.quantize`), so a sum over rows is an
   exact integer (int64);
2. discrete Laplace noise, P(k) ∝ exp(−|k|/t), is added to that integer,
   drawn exactly with integer arithmetic and rational probabilities
   (Canonne, Kamath and Steinke 2020, "The Discrete Gaussian for
   Differential Privacy", Algorithms 1 and 2), from the enclave's
   cryptographic stream;
3. only then is the result scaled back (`Grid.value`): every output is on
   the grid, whatever the data, and the distributions of neighbouring
   datasets differ exactly as the proof says.

Sensitivity is counted on the grid: under replace-one adjacency a row moves
a sum by at most the width of its range (hi − lo) in grid steps, so
t = sensitivity / ε gives pure ε-DP, and dp-accounting's
`from_discrete_laplace_mechanism(1/t, sensitivity)` is its exact PLD.

Why not a library: OpenDP (which installs here) samples the same
distributions exactly, but from the operating system's generator directly,
which cannot be keyed; Sterling draws every random choice from one
`SecretRandom` so that tests can repeat a run through the enclave-side hook
(`SecretRandom.for_tests`). The samplers here follow the paper's
pseudocode line by line and are checked against the exact pmf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from sterling.crypto.entropy import SecretRandom
from sterling.errors import UsageError

#: Grid steps per unit of a row's bound: rounding moves a row's term by at most 1/(2·UNITS) of it.
UNITS = 1 << 16
#: ε is used as a dyadic rational ⌊ε·2²⁰⌋/2²⁰ (never above ε), so noise parameters are exact.
EPSILON_BITS = 20


def exact_epsilon(epsilon: float) -> Fraction:
    """ε rounded down to a multiple of 2⁻²⁰: what a discrete release really spends (≤ ε)."""
    scaled = math.floor(epsilon * (1 << EPSILON_BITS))
    if scaled < 1:
        raise UsageError(f"a release needs ε ≥ 2^-{EPSILON_BITS}, got {epsilon}")
    return Fraction(scaled, 1 << EPSILON_BITS)


def bernoulli_exp(rng: SecretRandom, gamma: Fraction) -> bool:
    """True with probability exp(−γ), for rational γ ≥ 0 (CKS20, Algorithm 1)."""
    if gamma < 0:
        raise UsageError(f"bernoulli_exp needs γ ≥ 0, got {gamma}")
    while gamma > 1:
        if not bernoulli_exp(rng, Fraction(1)):
            return False
        gamma -= 1
    k = 1
    while rng.bernoulli_exact(gamma / k):
        k += 1
    return k % 2 == 1


def discrete_laplace(rng: SecretRandom, scale: Fraction) -> int:
    """One draw of the discrete Laplace distribution P(x) ∝ exp(−|x|/scale) (CKS20, Algorithm 2)."""
    if scale <= 0:
        raise UsageError(f"a discrete Laplace scale is > 0, got {scale}")
    t, s = scale.numerator, scale.denominator  # scale = t/s
    while True:
        u = rng.below(t)
        if not bernoulli_exp(rng, Fraction(u, t)):
            continue
        v = 0
        while bernoulli_exp(rng, Fraction(1)):
            v += 1
        y = (u + t * v) // s
        negative = rng.below(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def discrete_laplace_pmf(k: int, scale: Fraction) -> float:
    """P(X = k) for X ~ discrete Laplace(scale): (1 − p)/(1 + p)·p^|k| with p = exp(−1/scale)."""
    p = math.exp(-1 / float(scale))
    return (1 - p) / (1 + p) * p ** abs(k)


def discrete_laplace_tail(scale: Fraction, m: int) -> float:
    """P(X ≤ −m) = P(X ≥ m) for m ≥ 1: p^m/(1 + p)."""
    p = math.exp(-1 / float(scale))
    return p**m / (1 + p)


def discrete_laplace_sd(scale: Fraction) -> float:
    """The standard deviation √(2p)/(1 − p), p = exp(−1/scale)."""
    p = math.exp(-1 / float(scale))
    return math.sqrt(2 * p) / (1 - p)


@dataclass(frozen=True)
class Grid:
    """Rows' terms bounded to [lo, hi] (in units of `bound`) and rounded to `units` steps per bound."""

    bound: float
    lo: int = -1  # the range in multiples of `bound`: [-1, 1] symmetric, [0, 1] a non-negative term
    hi: int = 1
    units: int = UNITS

    def __post_init__(self) -> None:
        if not (self.bound > 0 and math.isfinite(self.bound)) or self.lo >= self.hi:
            raise UsageError(f"a grid needs bound > 0 and lo < hi, got {self}")

    @property
    def step(self) -> float:
        return self.bound / self.units

    @property
    def width(self) -> int:
        """A row's range in grid steps: the replace-one sensitivity of any sum of such rows."""
        return (self.hi - self.lo) * self.units

    def quantize(self, terms: np.ndarray) -> np.ndarray:
        """Each term clipped to [lo·bound, hi·bound] and rounded to the grid, as int64 steps."""
        clipped = np.clip(np.asarray(terms, dtype=np.float64), self.lo * self.bound, self.hi * self.bound)
        return np.rint(clipped / self.step).astype(np.int64)

    def value(self, steps: int) -> float:
        return steps * self.step


def release_sums(rng: SecretRandom, sums: list[int], *, epsilon: float, sensitivity: int) -> list[int]:
    """Each integer sum plus its own discrete Laplace noise of scale sensitivity/ε (pure ε-DP each)."""
    scale = Fraction(sensitivity) / exact_epsilon(epsilon)
    return [int(s) + discrete_laplace(rng, scale) for s in sums]
