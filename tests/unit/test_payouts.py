"""Settlement payouts: integer wei, the bonus split exactly, never above the pool."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sterling.appraisal.payouts import payout_plan
from sterling.errors import UsageError


def test_kept_providers_get_their_price_and_a_share_dropped_ones_their_fee():
    out = payout_plan(
        prices=[100, 200, 300], kept=[True, True, False], appraisal_fees=[0, 0, 50], values=[1.0, 3.0, 9.0],
        bonus_pool=1000,
    )  # fmt: skip
    assert out == [100 + 250, 200 + 750, 50]
    # Harmful (negative) values earn no bonus; a fee above the price is capped at the price.
    assert payout_plan(prices=[10, 10], kept=[True, False], appraisal_fees=[0, 99], values=[-1.0, 2.0],
                       bonus_pool=7) == [10, 10]  # fmt: skip


def test_a_bonus_past_two_to_the_53_wei_is_split_without_exceeding_it():
    # Float arithmetic paid 3,290 of 10,000 such splits above the pool (issue 17's audit).
    pool = 2**54 - 1
    values = [0.1, 0.7000000000000001]
    out = payout_plan(prices=[0, 0], kept=[True, True], appraisal_fees=[0, 0], values=values, bonus_pool=pool)
    assert sum(out) <= pool
    assert all(isinstance(v, int) for v in out)


@settings(max_examples=300, deadline=None)
@given(
    pool=st.integers(min_value=0, max_value=2**256 - 1),
    values=st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=8),
    data=st.data(),
)
def test_payouts_never_exceed_prices_plus_the_pool(pool, values, data):
    n = len(values)
    prices = data.draw(st.lists(st.integers(0, 2**256 - 1), min_size=n, max_size=n))
    kept = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    fees = data.draw(st.lists(st.integers(0, 2**256 - 1), min_size=n, max_size=n))
    out = payout_plan(prices=prices, kept=kept, appraisal_fees=fees, values=values, bonus_pool=pool)
    base = [p if k else min(p, f) for p, k, f in zip(prices, kept, fees, strict=True)]
    bonus = [o - b for o, b in zip(out, base, strict=True)]
    assert all(b >= 0 for b in bonus)
    # The pool is split exactly: never past it, and what is left is less than one wei per provider.
    assert pool - sum(bonus) >= 0
    if pool and any(k and v > 0 for k, v in zip(kept, values, strict=True)):
        assert pool - sum(bonus) < n
    else:
        assert sum(bonus) == 0


def test_amounts_that_are_not_whole_wei_are_refused():
    with pytest.raises(UsageError, match="whole numbers"):
        payout_plan(prices=[1.5], kept=[True], appraisal_fees=[0], values=[1.0], bonus_pool=1)  # type: ignore[list-item]
    with pytest.raises(UsageError, match="one price"):
        payout_plan(prices=[1], kept=[True, False], appraisal_fees=[0], values=[1.0], bonus_pool=1)
