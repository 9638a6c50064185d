"""Fixed-point units shared with the contracts.

Epsilon is counted in micro-epsilon (10**-6), delta in units of 10**-18.
Conversions are exact: a value that cannot be represented is refused, not
rounded, so what a user typed is what the chain enforces.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

from sterling.errors import UsageError

MICRO = 10**6
DELTA_SCALE = 10**18


def _exact(value: float | str | Decimal, scale: int, what: str) -> int:
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise UsageError(f"{what} must be a number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise UsageError(f"{what} must be a finite number ≥ 0, got {value}")
    scaled = d * scale
    if scaled != scaled.to_integral_value():
        raise UsageError(f"{what} {value} has more precision than 1/{scale} allows")
    return int(scaled)


def to_micro(epsilon: float | str | Decimal, what: str = "epsilon") -> int:
    """ε as micro-ε: ``to_micro(1.5) == 1_500_000``."""
    return _exact(epsilon, MICRO, what)


def from_micro(micro: int) -> float:
    return micro / MICRO


def to_delta(delta: float | str | Decimal) -> int:
    """δ in 10**-18 units; must lie strictly between 0 and 1."""
    fixed = _exact(delta, DELTA_SCALE, "delta")
    if not 0 < fixed < DELTA_SCALE:
        raise UsageError(f"delta must be in (0, 1), got {delta}")
    return fixed


def from_delta(fixed: int) -> float:
    return fixed / DELTA_SCALE


def charge_micro(epsilon: float) -> int:
    """ε spent as the micro-ε charged for it: rounded *up*, so a budget is never charged less than ran."""
    if not (epsilon >= 0 and epsilon == epsilon and epsilon != float("inf")):
        raise UsageError(f"an ε spent must be a finite number ≥ 0, got {epsilon}")
    return int((Decimal(repr(epsilon)) * MICRO).to_integral_value(rounding=ROUND_CEILING))
