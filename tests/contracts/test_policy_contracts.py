"""Policy contracts called during submission: an allow-list and a hospital's credential registry."""

from __future__ import annotations

import pytest

from sterling.chain.marketplace import AllowListPolicy, CredentialPolicy
from sterling.chain.units import to_micro
from sterling.errors import ContractRevert


def test_allow_list_allows_and_denies(live):
    policy = AllowListPolicy.deploy(live.chain, live.a.provider, marketplace=live.m.address)
    lid = live.publish(policy=policy.address)
    with pytest.raises(ContractRevert, match="marketplace: policy refused the consumer"):
        live.submit([lid], [1.0], value=10**18)
    with pytest.raises(ContractRevert, match="allowlist: caller is not the owner"):
        policy.set_allowed(live.a.consumer, live.a.consumer.address)
    policy.set_allowed(live.a.provider, live.a.consumer.address)
    assert policy.allowed(live.a.consumer.address)
    jid = live.submit([lid], [1.0])
    assert live.m.job(jid).allocations[0].price == live.m.list_price(lid, to_micro(1))
    policy.set_allowed(live.a.provider, live.a.consumer.address, allowed=False)
    with pytest.raises(ContractRevert, match="policy refused the consumer"):
        live.submit([lid], [0.5], value=10**18)


def test_credential_holders_use_it_free_and_others_pay(live):
    hospital = live.a.outsider
    policy = CredentialPolicy.deploy(
        live.chain, live.a.provider, marketplace=live.m.address, issuer=hospital.address
    )
    lid = live.publish(policy=policy.address, price_per_job=10**15, price_per_epsilon=10**16)
    list_price = live.m.list_price(lid, to_micro(1))
    assert live.m.quote(live.a.consumer.address, lid, to_micro(1)) == list_price
    with pytest.raises(ContractRevert, match="credential: caller is not the issuer"):
        policy.grant(live.a.provider, live.a.consumer.address, expires=live.chain.now() + 3600)
    policy.grant(hospital, live.a.consumer.address, expires=live.chain.now() + 3600)
    assert policy.holds(live.a.consumer.address)
    assert live.m.quote(live.a.consumer.address, lid, to_micro(1)) == 0
    free = live.submit([lid], [1.0], value=0)
    assert live.m.job(free).allocations[0].price == 0
    paid = live.submit([lid], [1.0], consumer=live.a.consumer2)
    assert live.m.job(paid).allocations[0].price == list_price
    with pytest.raises(ContractRevert, match="escrow below price"):
        live.submit([lid], [1.0], consumer=live.a.consumer2, value=list_price - 1)


def test_credentials_expire_and_can_be_revoked(live):
    hospital = live.a.outsider
    policy = CredentialPolicy.deploy(
        live.chain, live.a.provider, marketplace=live.m.address, issuer=hospital.address
    )
    lid = live.publish(policy=policy.address)
    with pytest.raises(ContractRevert, match="credential: expiry in the past"):
        policy.grant(hospital, live.a.consumer.address, expires=live.chain.now() - 1)
    policy.grant(hospital, live.a.consumer.address, expires=live.chain.now() + 100)
    live.chain.advance_time(200)
    assert not policy.holds(live.a.consumer.address)
    assert live.m.quote(live.a.consumer.address, lid, to_micro(1)) > 0
    policy.grant(hospital, live.a.consumer.address, expires=live.chain.now() + 1000)
    policy.revoke(hospital, live.a.consumer.address)
    assert live.m.quote(live.a.consumer.address, lid, to_micro(1)) > 0
    with pytest.raises(ContractRevert, match="credential: holder has no credential"):
        policy.revoke(hospital, live.a.consumer.address)
