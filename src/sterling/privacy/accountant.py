"""Privacy accounting for DP-SGD with Google's dp-accounting.

The reported ε comes from the privacy-loss-distribution (PLD) accountant in
its pessimistic (upper-bound) mode. A Gaussian-DP (CLT) approximation is
never used: it can under-report.

The mechanism is the one DP-SGD runs: each step samples every example
independently with probability q (Poisson sampling), and adds Gaussian noise
of standard deviation σ·C to the sum of per-example gradients clipped to norm
C. Neighbouring datasets differ by *replacing* one example
(`NeighboringRelation.REPLACE_ONE`): Sterling's row counts are public (each
listing's manifest states them and the enclave refuses any other count), q
is computed from them and the held-out split is a permutation of them, so
add/remove adjacency, which assumes the count hides whether a row is there,
does not describe what the pipeline releases (docs/privacy.md). Under
replace-one a clipped sum moves by up to 2C, which dp-accounting's REPLACE
privacy loss accounts for exactly.

dp-accounting's Rényi accountant has no replace-one Poisson event. As a cheap
upper bound, computed before the PLD is built (whose cost grows with ε), it
is run on σ/2 under add/remove: a sensitivity of 2C. Sterling's tests check
that it is never below the replace-one PLD on the regimes they try.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import dp_accounting as dpa
from absl import logging as absl_logging
from dp_accounting import pld, rdp

from sterling.errors import UsageError

# The RDP accountant logs a warning for every fractional order it skips; the
# orders it keeps still give a valid bound, so these warnings only add noise.
absl_logging.set_verbosity(absl_logging.ERROR)

#: PLD grid for reported figures (finer is tighter and slower).
REPORT_DISCRETIZATION = 1e-4
#: PLD grid while searching for a noise multiplier (coarser, still an upper bound).
SEARCH_DISCRETIZATION = 1e-3
#: The largest ε accounted for. Above it a run protects no one, and PLD's memory and time grow
#: with ε (found by fuzzing the verifier: σ = 0.1, q = 0.8, 60 steps is ε ≈ 3000 and took 2 GB
#: and 23 s; σ = 0.001 asked numpy for 38 GiB). RDP, an upper bound, is cheap and is checked first.
MAX_EPSILON = 100.0
#: What dp-accounting raises on parameters at the edge of floating point (a σ of 1e300 or
#: 1e-300, a δ of 1e-300): the accountant answers with a UsageError naming the parameters.
_NUMERIC_ERRORS = (ValueError, OverflowError, ZeroDivisionError, FloatingPointError)


#: The adjacency every figure is computed under (see the module docstring).
NEIGHBOURS = dpa.NeighboringRelation.REPLACE_ONE


@dataclass(frozen=True)
class DpSgdParams:
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float

    def __post_init__(self) -> None:
        problems = []
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            problems.append(f"noise multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            problems.append(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            problems.append(f"steps must be a whole number ≥ 1, got {self.steps}")
        if not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), got {self.delta}")
        if problems:
            raise UsageError("; ".join(problems))

    def event(self) -> dpa.DpEvent:
        """The run as a dp-accounting event, to be accounted under `NEIGHBOURS`."""
        step = dpa.PoissonSampledDpEvent(self.sample_rate, dpa.GaussianDpEvent(self.noise_multiplier))
        return dpa.SelfComposedDpEvent(step, self.steps)

    def bound_event(self) -> dpa.DpEvent:
        """The run at twice the sensitivity under add/remove: what the Rényi bound is computed on."""
        half = dpa.GaussianDpEvent(self.noise_multiplier / 2)
        return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(self.sample_rate, half), self.steps)


@dataclass(frozen=True)
class Epsilon:
    pld: float
    rdp: float
    delta: float

    def to_json(self) -> dict[str, float]:
        return {"pld": self.pld, "rdp": self.rdp, "delta": self.delta}


@lru_cache(maxsize=256)
def pld_epsilon(params: DpSgdParams, discretization: float = REPORT_DISCRETIZATION) -> float:
    acc = pld.PLDAccountant(NEIGHBOURS, value_discretization_interval=discretization)
    acc.compose(params.event())
    return float(acc.get_epsilon(params.delta))


@lru_cache(maxsize=256)
def rdp_epsilon(params: DpSgdParams) -> float:
    """A cheap upper bound on the replace-one ε (module docstring)."""
    acc = rdp.RdpAccountant()
    acc.compose(params.bound_event())
    return float(acc.get_epsilon(params.delta))


def _describe(params: DpSgdParams) -> str:
    return (
        f"σ = {params.noise_multiplier:g}, q = {params.sample_rate:g}, "
        f"{params.steps} steps, δ = {params.delta:g}"
    )


def bounded(params: DpSgdParams) -> float:
    """The cheap Rényi upper bound on the run's ε; refused (UsageError) past `MAX_EPSILON`.

    Called before any PLD of the run is built, whose time and memory grow with ε.
    """
    try:
        bound = rdp_epsilon(params)
    except _NUMERIC_ERRORS as exc:
        raise UsageError(f"the accountant cannot compute ε for {_describe(params)}: {exc}") from None
    if not bound <= MAX_EPSILON:
        raise UsageError(
            f"{_describe(params)} gives ε up to {bound:.4g} (Rényi bound); Sterling accounts for "
            f"ε ≤ {MAX_EPSILON:g}: add noise or take fewer steps"
        )
    return bound


def epsilon(params: DpSgdParams) -> Epsilon:
    """(ε under PLD, its Rényi upper bound) for the DP-SGD run `params` describes, replace-one.

    Refused (UsageError) when the Rényi bound passes `MAX_EPSILON`, before PLD is built.
    """
    bound = bounded(params)
    try:
        return Epsilon(pld=pld_epsilon(params), rdp=bound, delta=params.delta)
    except _NUMERIC_ERRORS as exc:
        raise UsageError(f"the accountant cannot compute ε for {_describe(params)}: {exc}") from None


@lru_cache(maxsize=256)
def calibrate_noise(*, target_epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.1 %) whose PLD ε does not exceed `target_epsilon`.

    The search uses a coarse pessimistic PLD grid; the result is then checked
    on the reporting grid and nudged up until it does not overshoot, so the
    reported ε of the returned multiplier is never above the target.
    """
    if not 0 < target_epsilon <= MAX_EPSILON:
        raise UsageError(f"target epsilon must be > 0 and ≤ {MAX_EPSILON:g}, got {target_epsilon}")
    DpSgdParams(1.0, sample_rate, steps, delta)  # validates the other arguments
    try:
        return _calibrate(target_epsilon, sample_rate, steps, delta)
    except UsageError:
        raise
    except _NUMERIC_ERRORS:
        raise UsageError(
            f"no noise multiplier between 0.05 and 1000 reaches ε ≤ {target_epsilon:g} with q = "
            f"{sample_rate:g}, {steps} steps, δ = {delta:g}"
        ) from None


def _calibrate(target_epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    """`calibrate_noise` once its arguments are valid (dp-accounting may still fail on them)."""

    def make_event(sigma: float) -> dpa.DpEvent:
        return DpSgdParams(sigma, sample_rate, steps, delta).event()

    def make_bound_event(sigma: float) -> dpa.DpEvent:
        return DpSgdParams(sigma, sample_rate, steps, delta).bound_event()

    # The Rényi bound is looser than PLD, so its multiplier bounds the PLD one from above; it
    # is cheap, and bracketing the PLD search with it keeps PLD away from tiny
    # multipliers, whose loss distributions are slow to build.
    sigma_rdp = float(
        dpa.calibrate_dp_mechanism(
            rdp.RdpAccountant, make_bound_event, target_epsilon, delta,
            bracket_interval=dpa.ExplicitBracketInterval(0.05, 2000.0), tol=1e-3,
        )
    )  # fmt: skip
    sigma = float(
        dpa.calibrate_dp_mechanism(
            lambda: pld.PLDAccountant(NEIGHBOURS, value_discretization_interval=SEARCH_DISCRETIZATION),
            make_event,
            target_epsilon,
            delta,
            bracket_interval=dpa.ExplicitBracketInterval(sigma_rdp / 4, sigma_rdp * 1.01),
            tol=1e-3,
        )
    )
    for _ in range(50):
        if pld_epsilon(DpSgdParams(sigma, sample_rate, steps, delta)) <= target_epsilon:
            return sigma
        sigma *= 1.001
    raise UsageError(f"no noise multiplier reaches ε ≤ {target_epsilon} with these parameters")
