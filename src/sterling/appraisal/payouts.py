"""What each provider is paid at settlement: integer wei, never above the escrow.

A provider whose data the final model used is paid its price; one the
consumer's contract dropped (and whose data was then left out) gets at most
the appraisal fee its terms set. The bonus pool is split among the used
providers in proportion to their positive appraised value.

Amounts are integer wei and the split is exact: each value is read as the
exact rational a float is, and each share is ⌊pool·v_i/Σv⌋, so the shares
never sum past the pool. The remainder (less than one wei per provider)
is not paid out: it stays in the escrow, which the contract refunds to the
consumer with everything else the payouts leave. (The split was `int(pool * v / total)` in floating
point, which rounds up as often as down once the pool passes 2⁵³ wei, about
0.009 ETH: payouts then exceeded escrow and the settlement reverted.)
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from sterling.errors import UsageError


def payout_plan(
    *,
    prices: Sequence[int],
    kept: Sequence[bool],
    appraisal_fees: Sequence[int],
    values: Sequence[float],
    bonus_pool: int,
) -> list[int]:
    """Wei paid to each listing's provider: its price (or appraisal fee if dropped) and its bonus share."""
    if not len(prices) == len(kept) == len(appraisal_fees) == len(values):
        raise UsageError("one price, kept flag, appraisal fee and value per listing")
    if any(int(p) != p or p < 0 for p in (*prices, *appraisal_fees, bonus_pool)):
        raise UsageError("prices, fees and the bonus pool are whole numbers of wei ≥ 0")
    base = [
        int(p) if k else min(int(f), int(p)) for p, k, f in zip(prices, kept, appraisal_fees, strict=True)
    ]
    weights = [Fraction(max(0.0, v)) if k else Fraction(0) for v, k in zip(values, kept, strict=True)]
    total = sum(weights, Fraction(0))
    if bonus_pool <= 0 or total <= 0:
        return base
    return [b + int(bonus_pool * w // total) for b, w in zip(base, weights, strict=True)]
