from decimal import Decimal

import pytest

from sterling.chain.units import from_delta, from_micro, to_delta, to_micro
from sterling.errors import UsageError


@pytest.mark.parametrize(
    ("eps", "micro"), [(1, 1_000_000), (0.5, 500_000), ("2.000001", 2_000_001), (Decimal("3"), 3_000_000)]
)
def test_to_micro_is_exact(eps, micro):
    assert to_micro(eps) == micro
    assert from_micro(micro) == pytest.approx(float(eps))


@pytest.mark.parametrize("bad", [0.0000001, "1e-7", -1, "nan", "inf", "abc"])
def test_to_micro_refuses_what_it_cannot_represent(bad):
    with pytest.raises(UsageError, match="epsilon"):
        to_micro(bad)


def test_delta_round_trip_and_range():
    assert to_delta(1e-5) == 10**13
    assert from_delta(10**13) == pytest.approx(1e-5)
    for bad in (0, 1, 1.5, -1e-5):
        with pytest.raises(UsageError, match="delta"):
            to_delta(bad)
