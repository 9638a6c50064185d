"""Enclave registry: attestation checked by ecrecover, allow-listed measurements, admin powers.

Widening the admin's power (a new signer, a new measurement) waits CHANGE_DELAY, announced by an
event with the time it takes effect; narrowing it (revocations) is immediate.
"""

from __future__ import annotations

import pytest
from eth_account import Account

from sterling.chain import digests
from sterling.errors import ContractRevert

MEASUREMENT = bytes.fromhex("11" * 32)  # allowed by the conftest's deployment


def test_register_with_a_valid_attestation(market):
    e = market.a.enclave
    market.register(e)
    info = market.m.enclave(e.address)
    assert info.registered
    assert info.measurement == MEASUREMENT
    assert info.hpke_public_key == market.hpke_key
    assert market.m.is_enclave(e.address)
    assert market.m.enclave_count() == 1
    assert [ev.name for ev in market.m.events(from_block=market.chain.w3.eth.block_number)] == [
        "EnclaveRegistered"
    ]


def test_measurement_not_allowed(market):
    other = bytes.fromhex("99" * 32)
    with pytest.raises(ContractRevert, match="registry: measurement not allowed"):
        market.m.register_enclave(
            market.a.enclave, measurement=other, hpke_public_key=market.hpke_key,
            attestation=market.attest(market.a.enclave, measurement=other),
        )  # fmt: skip


def test_attestation_signed_by_the_wrong_key(market):
    forged = market.attest(market.a.enclave, signer=market.a.outsider)
    with pytest.raises(ContractRevert, match="attestation not signed by the attestation signer"):
        market.m.register_enclave(
            market.a.enclave, measurement=MEASUREMENT, hpke_public_key=market.hpke_key, attestation=forged
        )


def test_attestation_replayed_by_another_sender(market):
    att = market.attest(market.a.enclave)
    with pytest.raises(ContractRevert, match="attestation not signed by the attestation signer"):
        market.m.register_enclave(
            market.a.outsider, measurement=MEASUREMENT, hpke_public_key=market.hpke_key, attestation=att
        )


def test_attestation_for_another_marketplace_or_chain(market):
    for chain_id, address in ((market.chain.chain_id, "0x" + "12" * 20), (1, market.m.address)):
        digest = digests.attestation_digest(
            chain_id=chain_id, marketplace=address, measurement=MEASUREMENT,
            enclave=market.a.enclave.address, hpke_public_key=market.hpke_key,
        )  # fmt: skip
        with pytest.raises(ContractRevert, match="attestation not signed"):
            market.m.register_enclave(
                market.a.enclave, measurement=MEASUREMENT, hpke_public_key=market.hpke_key,
                attestation=digests.sign_digest(market.a.platform, digest),
            )  # fmt: skip


def test_attestation_with_another_hpke_key(market):
    att = market.attest(market.a.enclave, hpke_key=bytes.fromhex("33" * 32))
    with pytest.raises(ContractRevert, match="attestation not signed"):
        market.m.register_enclave(
            market.a.enclave, measurement=MEASUREMENT, hpke_public_key=market.hpke_key, attestation=att
        )


def test_second_registration_and_bad_signature_shapes(market):
    market.register(market.a.enclave)
    with pytest.raises(ContractRevert, match="enclave already registered"):
        market.register(market.a.enclave)
    with pytest.raises(ContractRevert, match="bad signature length"):
        market.m.register_enclave(
            market.a.enclave2,
            measurement=MEASUREMENT,
            hpke_public_key=market.hpke_key,
            attestation=b"\x01" * 64,
        )
    with pytest.raises(ContractRevert, match="empty hpke key"):
        market.m.register_enclave(
            market.a.enclave2, measurement=MEASUREMENT, hpke_public_key=bytes(32), attestation=b"\x01" * 65
        )


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("allow_measurement", (bytes.fromhex("44" * 32),)),
        ("set_lease_seconds", (5,)),
        ("set_attestation_signer", ("0x" + "55" * 20,)),
        ("transfer_admin", ("0x" + "55" * 20,)),
    ],
)
def test_admin_functions_refuse_others(market, call, args):
    module = "marketplace" if call == "set_lease_seconds" else "registry"
    with pytest.raises(ContractRevert, match=f"{module}: caller is not the admin"):
        getattr(market.m, call)(market.a.outsider, *args)
    getattr(market.m, call)(market.a.admin, *args)  # and work for the admin


def test_admin_transfer_and_a_signer_rotation_that_waits_the_delay(market):
    new_admin = market.a.outsider
    market.m.transfer_admin(market.a.admin, new_admin.address)
    assert market.m.admin() == new_admin.address
    with pytest.raises(ContractRevert, match="caller is not the admin"):
        market.m.set_lease_seconds(market.a.admin, 1)
    rotated = Account.create()
    delay = market.m.change_delay()
    assert delay == 2 * 86400
    effective_at = market.m.set_attestation_signer(new_admin, rotated.address)
    assert effective_at == market.chain.now() + delay
    (announced,) = [e for e in market.m.events(from_block=market.chain.w3.eth.block_number)]
    assert announced.name == "AttestationSignerAnnounced"
    assert announced.args == {"signer": rotated.address, "effective_at": effective_at}
    assert market.m.pending_signer() == rotated.address
    assert market.m.signer_effective_at() == effective_at
    # Until then the old signer is in force and the new one's attestations fail.
    assert market.m.attestation_signer() == market.a.platform.address
    att = market.attest(market.a.enclave, signer=rotated)
    with pytest.raises(ContractRevert, match="attestation not signed"):
        market.m.register_enclave(
            market.a.enclave, measurement=MEASUREMENT, hpke_public_key=market.hpke_key, attestation=att
        )
    market.chain.advance_time(delay)
    assert market.m.attestation_signer() == rotated.address
    assert market.m.pending_signer() is None
    with pytest.raises(ContractRevert, match="attestation not signed"):
        market.register(market.a.enclave)  # the old platform key no longer counts
    market.m.register_enclave(
        market.a.enclave, measurement=MEASUREMENT, hpke_public_key=market.hpke_key, attestation=att
    )
    assert market.m.is_enclave(market.a.enclave.address)


def test_a_new_measurement_waits_the_delay(market):
    other = bytes.fromhex("77" * 32)
    effective_at = market.m.allow_measurement(market.a.admin, other)
    assert effective_at == market.chain.now() + market.m.change_delay()
    (announced,) = market.m.events(from_block=market.chain.w3.eth.block_number)
    assert (announced.name, announced.args["effective_at"]) == ("MeasurementAnnounced", effective_at)
    assert market.m.measurement_effective_at(other) == effective_at
    assert not market.m.measurement_allowed(other)
    with pytest.raises(ContractRevert, match="registry: measurement not allowed"):
        market.register(market.a.enclave, measurement=other)
    with pytest.raises(ContractRevert, match="already allowed or announced"):
        market.m.allow_measurement(market.a.admin, other)  # no restarting a clock to confuse watchers
    market.chain.advance_time(market.m.change_delay() - 60)
    with pytest.raises(ContractRevert, match="registry: measurement not allowed"):
        market.register(market.a.enclave, measurement=other)
    market.chain.advance_time(60)
    assert market.m.measurement_allowed(other)
    market.register(market.a.enclave, measurement=other)
    assert market.m.is_enclave(market.a.enclave.address)


def test_an_announced_measurement_can_be_withdrawn_at_once(market):
    other = bytes.fromhex("78" * 32)
    market.m.allow_measurement(market.a.admin, other)
    market.m.allow_measurement(market.a.admin, other, allowed=False)
    assert market.m.measurement_effective_at(other) == 0
    market.chain.advance_time(market.m.change_delay() + 1)
    assert not market.m.measurement_allowed(other)
    with pytest.raises(ContractRevert, match="registry: measurement not allowed"):
        market.m.allow_measurement(market.a.admin, other, allowed=False)


def test_allow_measurement_now_refuses_a_chain_without_time_travel(market, monkeypatch):
    from sterling.errors import UsageError

    monkeypatch.setattr(market.chain, "kind", "rpc")
    with pytest.raises(UsageError, match="only a development chain can move its clock"):
        market.m.allow_measurement_now(market.a.admin, bytes.fromhex("79" * 32))
    assert market.m.measurement_effective_at(bytes.fromhex("79" * 32)) > market.chain.now()  # announced


def test_the_registry_binds_once(market):
    with pytest.raises(ContractRevert, match="registry: already bound"):
        market.m.registry.bind(
            market.a.admin, marketplace=market.m.address, prediction_fees=market.m.fees.address
        )
    assert market.m.registry.marketplace() == market.m.address
    assert market.m.fees.marketplace() == market.m.address


def test_revocation_and_disallowed_measurement_stop_claims(live):
    lid = live.publish()
    job = live.submit([lid], [1.0])
    live.m.revoke_enclave(live.a.admin, live.a.enclave.address)
    assert not live.m.is_enclave(live.a.enclave.address)
    with pytest.raises(ContractRevert, match="caller is not a registered enclave"):
        live.m.claim_job(live.a.enclave, job)
    with pytest.raises(ContractRevert, match="unknown enclave"):
        live.m.revoke_enclave(live.a.admin, live.a.enclave.address)
    live.register(live.a.enclave2)
    live.m.allow_measurement(live.a.admin, MEASUREMENT, allowed=False)
    assert not live.m.is_enclave(live.a.enclave2.address)
    with pytest.raises(ContractRevert, match="caller is not a registered enclave"):
        live.m.claim_job(live.a.enclave2, job)
