"""An operator who cannot read data (issue 17 item 5): the Marketplace admin's registry powers.

The attack, on the real in-process chain: the admin points the attestation signer at its own key,
registers an ordinary account as an "enclave" (with an HPKE key the admin holds and the real
enclave's measurement), and restores the signer. The chain now shows two live enclaves with the
same measurement, the rogue one newest. A client that seals to "the newest registered enclave"
hands the admin every new data key; Sterling's client seals only to a measurement *and*
attestation signer it has confirmed, and refuses the rogue enclave by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from attackers import Arena, tabular
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount

from sterling.chain import digests, node
from sterling.chain.deploy import ensure_deployment, simulated_platform_key
from sterling.chain.marketplace import Marketplace
from sterling.crypto import container, seal
from sterling.data.dataset import Dataset
from sterling.errors import ContractRevert, IntegrityError
from sterling.sdk.consumer import submit_job
from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset
from sterling.sdk.trust import Trust, TrustFile, UntrustedEnclave, announcements, attesting_signers

TERMS = ListingTerms(10**15, 10**15, 5.0, 2.0, 1e-5)
STERLING = [sys.executable, "-m", "sterling.cli"]
MEASUREMENT = bytes.fromhex("5a" * 32)


class Rogue:
    """What the admin made: an ordinary account registered as an enclave, and the HPKE key it holds."""

    def __init__(self, account: LocalAccount, key: X25519PrivateKey) -> None:
        self.account = account
        self.key = key


def wait_for(arena: Arena, effective_at: int) -> None:
    """Let chain time pass until an announced change is in force (the embedded chain travels in time)."""
    if effective_at > arena.chain.now():
        arena.chain.advance_time(effective_at - arena.chain.now())


@pytest.fixture(scope="module")
def rogue(arena: Arena) -> Rogue:
    market, admin = arena.market, arena.admin
    platform = market.attestation_signer()
    measurement = arena.worker.tee.measurement()
    account, key = arena.account(), X25519PrivateKey.generate()
    hpke = seal.public_bytes(key)
    wait_for(arena, market.set_attestation_signer(admin, admin.address))  # announced; in force 2 days on
    digest = market.attestation_digest(measurement=measurement, enclave=account.address, hpke_public_key=hpke)
    market.register_enclave(
        account, measurement=measurement, hpke_public_key=hpke, attestation=digests.sign_digest(admin, digest)
    )
    wait_for(arena, market.set_attestation_signer(admin, platform))
    assert market.attestation_signer() == platform  # nothing on the registry looks changed
    assert market.is_enclave(account.address)
    assert market.live_enclaves()[0].address == account.address  # the newest live enclave
    return Rogue(account, key)


def confirmed(arena: Arena) -> Trust:
    """What a provider has checked: the real enclave's measurement, attested by the platform's key."""
    tee = arena.worker.tee
    return Trust.of(tee.measurement(), tee.platform_key.address, simulated=True)


def test_the_attack_is_real_a_client_sealing_to_the_newest_enclave_hands_the_admin_the_data(arena, rogue):
    dataset = tabular(60, 7)
    sealed = seal_dataset(dataset, arena.store, name="naive")
    naive = arena.market.live_enclaves()[0]
    provider = arena.account()
    publish(arena.market, provider, sealed, TERMS, enclave=naive)
    listing = arena.market.listing(arena.market.listing_count())
    binding = seal.data_key_binding(
        arena.chain.chain_id, arena.market.address, listing.data_hash, provider=provider.address
    )
    key = seal.unseal(listing.sealed_key, rogue.key, binding)  # the admin opens the data key...
    blob = arena.store.get_bytes(sealed.ciphertext.sha256)
    stolen = Dataset.from_bytes(container.decrypt_bytes(blob, key))  # ...and the data, byte for byte
    assert np.array_equal(stolen.features, dataset.features)


def test_the_chain_shows_which_signer_attested_each_enclave(arena, rogue):
    signers = attesting_signers(arena.market)
    assert signers[rogue.account.address][0] == arena.admin.address
    assert signers[arena.worker.address][0] == arena.market.attestation_signer()


def test_a_provider_never_seals_to_the_admins_enclave(arena, rogue):
    trust = confirmed(arena)
    chosen = choose_enclave(arena.market, trust=trust)
    assert chosen.address == arena.worker.address != rogue.account.address
    assert chosen.signer == arena.market.attestation_signer()
    measurement = "0x" + arena.worker.tee.measurement().hex()
    with pytest.raises(UntrustedEnclave) as refused:
        choose_enclave(arena.market, rogue.account.address, trust=trust)
    message = str(refused.value)
    assert rogue.account.address in message
    assert measurement in message
    assert arena.admin.address in message  # the signer it was really attested by
    assert f"sterling enclave trust {measurement} --signer {arena.admin.address}" in message

    provider = arena.account()
    sealed = seal_dataset(tabular(60, 8), arena.store, name="careful")
    publish(arena.market, provider, sealed, TERMS, enclave=chosen)
    listing = arena.market.listing(arena.market.listing_count())
    binding = seal.data_key_binding(
        arena.chain.chain_id, arena.market.address, listing.data_hash, provider=provider.address
    )
    with pytest.raises(IntegrityError):
        seal.unseal(listing.sealed_key, rogue.key, binding)  # the admin's key opens nothing
    assert arena.worker.keys.open(listing.sealed_key, binding) == sealed.data_key


def test_trusting_nothing_refuses_every_enclave_and_names_each(arena, rogue):
    with pytest.raises(UntrustedEnclave) as refused:
        choose_enclave(arena.market, trust=Trust())
    assert rogue.account.address in str(refused.value)
    assert arena.worker.address in str(refused.value)


def test_a_listings_pin_narrows_trust(arena, rogue):
    other = bytes.fromhex("ab" * 32)
    with pytest.raises(UntrustedEnclave, match="a listing pins measurement 0xabab"):
        choose_enclave(arena.market, trust=confirmed(arena), pins=[other])
    assert choose_enclave(arena.market, trust=confirmed(arena), pins=[arena.worker.tee.measurement()])


def test_a_consumer_seals_its_job_body_only_to_a_trusted_enclave(arena, rogue):
    sealed = seal_dataset(tabular(80, 9), arena.store, name="for-a-job")
    enclave = choose_enclave(arena.market, trust=confirmed(arena))
    lid = publish(arena.market, arena.account(), sealed, TERMS, enclave=enclave).listing_id
    consumer = arena.account()
    with pytest.raises(UntrustedEnclave):
        submit_job(arena.market, consumer, arena.consumer_key, arena.job([lid]), arena.store, trust=Trust())
    done = submit_job(
        arena.market, consumer, arena.consumer_key, arena.job([lid]), arena.store, trust=confirmed(arena)
    )
    assert done.enclave == arena.worker.address


def test_a_signer_change_is_announced_and_in_force_only_after_the_delay(arena, rogue):
    """The registry's bound on the attack: a provider sees the new signer coming, days ahead."""
    market, admin = arena.market, arena.admin
    platform, other = market.attestation_signer(), Account.create()
    announced_at = arena.chain.now()
    effective_at = market.set_attestation_signer(admin, other.address)
    assert effective_at >= announced_at + market.change_delay()
    assert market.change_delay() == 2 * 86400
    assert market.attestation_signer() == platform  # not yet in force
    assert market.pending_signer() == other.address
    (seen,) = announcements(market)  # what a provider's client shows (`sterling enclave status`)
    assert (seen.kind, seen.value, seen.effective_at) == ("attestation signer", other.address, effective_at)
    (event,) = [
        e
        for e in market.registry.events()
        if e.name == "AttestationSignerAnnounced" and e.block == seen.block
    ]
    assert event.args["signer"] == other.address
    account, hpke = arena.account(), seal.public_bytes(X25519PrivateKey.generate())
    measurement = arena.worker.tee.measurement()

    def attestation() -> bytes:
        digest = market.attestation_digest(
            measurement=measurement, enclave=account.address, hpke_public_key=hpke
        )
        return digests.sign_digest(other, digest)

    with pytest.raises(ContractRevert, match="attestation not signed by the attestation signer"):
        market.register_enclave(
            account, measurement=measurement, hpke_public_key=hpke, attestation=attestation()
        )
    arena.chain.advance_time(effective_at - arena.chain.now() - 60)
    assert market.attestation_signer() == platform  # a minute before: still the old one
    wait_for(arena, effective_at)
    assert market.attestation_signer() == other.address
    assert announcements(market) == []
    market.register_enclave(account, measurement=measurement, hpke_public_key=hpke, attestation=attestation())
    assert attesting_signers(market)[account.address][0] == other.address
    assert choose_enclave(market, trust=confirmed(arena)).address == arena.worker.address
    wait_for(arena, market.set_attestation_signer(admin, platform))


def sterling(home, *args):
    env = {**os.environ, "STERLING_HOME": str(home)}
    return subprocess.run([*STERLING, *args], capture_output=True, text=True, env=env, timeout=120)


def test_trust_settings_are_kept_by_sterling_enclave_trust(tmp_path):
    measurement, signer = "0x" + "cd" * 32, "0x" + "12" * 20
    done = sterling(tmp_path, "enclave", "trust", measurement, "--signer", signer, "--format", "json")
    assert done.returncode == 0, done.stderr
    (entry,) = TrustFile.in_home(tmp_path).load().entries
    assert entry.measurement.hex() == "cd" * 32
    assert entry.signer.lower() == signer
    listed = json.loads(sterling(tmp_path, "enclave", "trust", "--list", "--format", "json").stdout)
    assert [e["measurement"] for e in listed["enclaves"]] == [measurement]
    bad = sterling(tmp_path, "enclave", "trust", measurement)  # no signer: a measurement alone is not enough
    assert bad.returncode == 2
    assert "--signer" in bad.stderr
    gone = sterling(tmp_path, "enclave", "untrust", measurement, "--format", "json")
    assert gone.returncode == 0, gone.stderr
    assert TrustFile.in_home(tmp_path).load().entries == ()


@pytest.mark.anvil
def test_sterling_provider_publish_shows_the_enclave_and_refuses_the_admins(tmp_path, anvil_binary):
    """The same attack against `sterling provider publish` on anvil, as a provider runs it."""
    chain = node.start_anvil(anvil_binary)
    try:
        state = tmp_path / "chain"
        admin = chain.dev_accounts[0]
        deployment, _ = ensure_deployment(chain, state, deployer=admin)
        market = Marketplace.at(chain, deployment.marketplace)
        platform = simulated_platform_key(state)
        real, rogue = chain.dev_accounts[1], chain.dev_accounts[2]
        market.allow_measurement_now(admin, MEASUREMENT)
        for enclave, signer in ((real, platform), (rogue, admin)):
            if market.attestation_signer() != signer.address:
                chain.advance_time(market.set_attestation_signer(admin, signer.address) - chain.now())
            hpke = seal.public_bytes(X25519PrivateKey.generate())
            digest = market.attestation_digest(
                measurement=MEASUREMENT, enclave=enclave.address, hpke_public_key=hpke
            )
            market.register_enclave(
                enclave,
                measurement=MEASUREMENT,
                hpke_public_key=hpke,
                attestation=digests.sign_digest(signer, digest),
            )
        chain.advance_time(market.set_attestation_signer(admin, platform.address) - chain.now())
        home = tmp_path / "home"
        trusted = sterling(home, "enclave", "trust", "0x" + MEASUREMENT.hex(), "--signer", platform.address)
        assert trusted.returncode == 0, trusted.stderr
        data = tmp_path / "clinic.npz"
        features = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
        np.savez(data, features=features, labels=(features[:, 0] > 0).astype(np.int64))
        publish = [
            "provider", "publish", str(data), "--rpc-url", str(chain.rpc_url), "--state", str(state),
            "--store", str(tmp_path / "blobs"), "--dev-account", "5", "--price-per-job", "1000",
            "--price-per-epsilon", "2000", "--epsilon-budget", "4", "--max-epsilon-per-job", "2",
            "--delta", "1e-5",
        ]  # fmt: skip
        shown = sterling(home, *publish)
        assert shown.returncode == 0, shown.stderr
        assert f"sealing the data key to enclave {real.address}" in " ".join(shown.stdout.split())
        assert platform.address in shown.stdout
        assert "SIMULATION" in shown.stdout
        refused = sterling(home, *publish, "--enclave", rogue.address)
        assert refused.returncode == 8, refused.stdout
        message = " ".join(refused.stderr.split())
        assert (
            f"enclave {rogue.address} (measurement 0x{MEASUREMENT.hex()}, attested by {admin.address})"
            in message
        )
        assert f"sterling enclave trust 0x{MEASUREMENT.hex()} --signer {admin.address}" in message
        assert market.listing_count() == 1  # the refused publish stored and listed nothing
    finally:
        chain.close()
