"""The mechanisms a job runs on private data, and one PLD accountant that composes them.

Each mechanism is a small frozen value with everything its privacy depends
on, so that a plan (what the verifier approves) and a receipt (what the
enclave ran) can be written down, hashed, and re-accounted by anyone:

- `DpSgd`: a DP-SGD run, T steps of the Poisson-subsampled Gaussian
  mechanism (noise multiplier σ, sampling rate q), on clipped gradients;
- `DiscreteLaplace`: integer sums with exact discrete Laplace noise
  (`sterling.privacy.noise`), pure ε-DP at its grid sensitivity;
- `Gaussian`: a Gaussian vector release (attribution's noisy gradient sums),
  noise multiplier σ relative to one row's L2 bound.

All are accounted under replace-one adjacency (`accountant.NEIGHBOURS`):
DP-SGD and the Gaussian with dp-accounting's REPLACE privacy loss, discrete
Laplace sums with their replace-one sensitivity (the width of a row's range
in grid steps), for which the shifted pair of distributions is the same as
dp-accounting's `from_discrete_laplace_mechanism` builds. `epsilon(...)`
composes every mechanism that touched a dataset into one privacy loss
distribution and reads ε at the job's δ: no ε is ever added to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal, TypeAlias

from dp_accounting.pld import privacy_loss_distribution as pld_lib

from sterling.errors import UsageError
from sterling.privacy import accountant
from sterling.privacy.noise import UNITS, exact_epsilon

#: dp-accounting ships no type information: a privacy loss distribution is typed as Any here.
PLD: TypeAlias = Any
#: PLD grid for figures that are charged or reported (finer is tighter and slower).
REPORT_GRID = accountant.REPORT_DISCRETIZATION
#: PLD grid for progress figures and searches (coarser: a looser upper bound, several times cheaper).
COARSE_GRID = accountant.SEARCH_DISCRETIZATION


@dataclass(frozen=True)
class DpSgd:
    """A DP-SGD run: `steps` Poisson-subsampled Gaussian steps on gradients clipped to one bound."""

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    kind: Literal["dp_sgd"] = "dp_sgd"

    def __post_init__(self) -> None:
        accountant.DpSgdParams(self.noise_multiplier, self.sample_rate, max(1, self.steps), 0.5)

    def prefix(self, steps: int, name: str | None = None) -> DpSgd:
        """The same run stopped after `steps` steps."""
        return DpSgd(name or self.name, self.noise_multiplier, self.sample_rate, steps)

    def pld(self, grid: float) -> PLD:
        if self.steps == 0:
            empty: PLD = pld_lib.identity(value_discretization_interval=grid)
            return empty
        return _dpsgd_pld(self.noise_multiplier, self.sample_rate, self.steps, grid)


@dataclass(frozen=True)
class DiscreteLaplace:
    """Integer sums released with discrete Laplace noise of scale sensitivity/ε (each pure ε-DP)."""

    name: str
    epsilon: float
    sensitivity: int  # replace-one, in grid steps
    kind: Literal["discrete_laplace"] = "discrete_laplace"

    def __post_init__(self) -> None:
        if self.sensitivity < 1:
            raise UsageError(f"{self.name}: a sensitivity is at least one grid step, got {self.sensitivity}")
        exact_epsilon(self.epsilon)  # refuses an ε too small to release with

    @property
    def scale(self) -> Fraction:
        """t in P(k) ∝ exp(−|k|/t): the noise the enclave draws."""
        return Fraction(self.sensitivity) / exact_epsilon(self.epsilon)

    def pld(self, grid: float) -> PLD:
        return _laplace_pld(self.scale, self.sensitivity, grid)


@dataclass(frozen=True)
class Gaussian:
    """A Gaussian vector release: noise σ·B per coordinate on sums whose rows are bounded by B in L2."""

    name: str
    noise_multiplier: float
    kind: Literal["gaussian"] = "gaussian"

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise UsageError(f"{self.name}: a noise multiplier is > 0, got {self.noise_multiplier}")

    def pld(self, grid: float) -> PLD:
        return _gaussian_pld(self.noise_multiplier, grid)


Mechanism = DpSgd | DiscreteLaplace | Gaussian
_KINDS: dict[str, type[DpSgd] | type[DiscreteLaplace] | type[Gaussian]] = {
    "dp_sgd": DpSgd,
    "discrete_laplace": DiscreteLaplace,
    "gaussian": Gaussian,
}


def to_json(m: Mechanism) -> dict[str, Any]:
    return asdict(m)


def from_json(doc: Any) -> Mechanism:
    """A mechanism from its JSON form; a clear UsageError for anything else."""
    if not isinstance(doc, dict) or doc.get("kind") not in _KINDS:
        raise UsageError(f"not a mechanism: {str(doc)[:120]}")
    cls = _KINDS[doc["kind"]]
    try:
        return cls(**doc)
    except TypeError as exc:
        raise UsageError(f"a {doc['kind']} mechanism: {exc}") from None


@lru_cache(maxsize=128)
def _dpsgd_pld(sigma: float, q: float, steps: int, grid: float) -> PLD:
    one: PLD = pld_lib.from_gaussian_mechanism(
        sigma,
        sampling_prob=q,
        neighboring_relation=accountant.NEIGHBOURS,
        value_discretization_interval=grid,
    )
    composed: PLD = one.self_compose(steps)
    return composed


@lru_cache(maxsize=128)
def _laplace_pld(scale: Fraction, sensitivity: int, grid: float) -> PLD:
    built: PLD = pld_lib.from_discrete_laplace_mechanism(
        parameter=float(1 / scale), sensitivity=sensitivity, value_discretization_interval=grid
    )
    return built


@lru_cache(maxsize=128)
def _gaussian_pld(sigma: float, grid: float) -> PLD:
    built: PLD = pld_lib.from_gaussian_mechanism(
        sigma, neighboring_relation=accountant.NEIGHBOURS, value_discretization_interval=grid
    )
    return built


def _guard(mechanisms: Sequence[Mechanism], delta: float) -> None:
    """Refuse runs whose cheap Rényi bound is past MAX_EPSILON before their PLD is built."""
    for m in mechanisms:
        if isinstance(m, DpSgd) and m.steps > 0:
            accountant.bounded(accountant.DpSgdParams(m.noise_multiplier, m.sample_rate, m.steps, delta))


def epsilon(mechanisms: Sequence[Mechanism], delta: float, *, grid: float = REPORT_GRID) -> float:
    """ε at `delta` of everything in `mechanisms` run on one dataset, composed as one PLD."""
    return _epsilon(tuple(mechanisms), delta, grid)


@lru_cache(maxsize=256)
def _epsilon(mechanisms: tuple[Mechanism, ...], delta: float, grid: float) -> float:
    # Cached: a job asks the same composition several times (the verifier's worst case, the
    # summary, each listing's charge, the receipt), and each costs a few PLD convolutions.
    if not mechanisms:
        return 0.0
    _guard(mechanisms, delta)
    composed = pld_lib.identity(value_discretization_interval=grid)
    for m in mechanisms:
        composed = composed.compose(m.pld(grid))
    return max(0.0, float(composed.get_epsilon_for_delta(delta)))


# ------------------------------------------------------- the releases Sterling makes
# One definition of each release's name and replace-one sensitivity, used by the verifier (which
# plans them) and by the code that draws them. A row's term is bounded by B and rounded to
# UNITS grid steps per B (`noise.Grid`): a sum of terms in [−B, B] moves by 2·UNITS steps when a
# row is replaced, a sum of terms in [0, B] by UNITS, a count by 1.


def values_release(epsilon: float) -> DiscreteLaplace:
    """Per-provider influence values (appraisal/release.py): terms in [−c, c]."""
    return DiscreteLaplace("appraisal.values", epsilon, 2 * UNITS)


def screening_release(epsilon: float) -> DiscreteLaplace:
    """Per-provider label-agreement sums (appraisal/screening.py): scores in [−B, B]."""
    return DiscreteLaplace("appraisal.screening", epsilon, 2 * UNITS)


def accuracy_release(epsilon: float) -> DiscreteLaplace:
    """The count of correct predictions on private held-out rows (enclave/metrics.py)."""
    return DiscreteLaplace("metrics.accuracy", epsilon, 1)


def loss_release(epsilon: float) -> DiscreteLaplace:
    """The sum of clipped losses, each in [0, L], on private held-out rows (enclave/metrics.py)."""
    return DiscreteLaplace("metrics.loss", epsilon, UNITS)
