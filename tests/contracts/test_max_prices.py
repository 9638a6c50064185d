"""Prices the consumer agreed to: `submit_job` refuses a policy price above the consumer's maximum."""

from __future__ import annotations

import pytest

from sterling.chain.marketplace import CredentialPolicy
from sterling.chain.units import to_micro
from sterling.errors import ContractRevert


def test_a_price_above_the_maximum_is_refused_and_at_it_accepted(live) -> None:  # type: ignore[no-untyped-def]
    a, b = live.publish(), live.publish(provider=live.a.provider2, price_per_job=10**16)
    quotes = [live.m.quote(live.a.consumer.address, lid, to_micro(1)) for lid in (a, b)]
    for i in range(2):
        lower = list(quotes)
        lower[i] -= 1
        with pytest.raises(ContractRevert, match="marketplace: price above the consumer's maximum"):
            live.submit([a, b], [1.0, 1.0], value=sum(quotes), max_prices=lower)
    jid = live.submit([a, b], [1.0, 1.0], value=sum(quotes), max_prices=quotes)
    assert [x.price for x in live.m.job(jid).allocations] == quotes
    generous = live.submit([a, b], [1.0, 1.0], value=sum(quotes), max_prices=[q * 10 for q in quotes])
    assert [x.price for x in live.m.job(generous).allocations] == quotes  # the maximum is not the price


def test_a_policy_that_raises_the_price_after_the_quote_is_refused(live) -> None:  # type: ignore[no-untyped-def]
    hospital = live.a.outsider
    policy = CredentialPolicy.deploy(
        live.chain, live.a.provider, marketplace=live.m.address, issuer=hospital.address
    )
    lid = live.publish(policy=policy.address)
    policy.grant(hospital, live.a.consumer.address, expires=live.chain.now() + 3600)
    seen = live.m.quote(live.a.consumer.address, lid, to_micro(1))
    assert seen == 0
    policy.revoke(hospital, live.a.consumer.address)  # between the quote and the submission
    with pytest.raises(ContractRevert, match="price above the consumer's maximum"):
        live.submit([lid], [1.0], value=10**18, max_prices=[seen])
    assert live.m.job_count() == 0
