"""The transaction layer against a real anvil: reverts, gas, nonces, restarts."""

from __future__ import annotations

import threading

import pytest

from sterling.chain import node
from sterling.chain.marketplace import Marketplace
from sterling.errors import ChainUnavailable, ContractRevert

pytestmark = pytest.mark.anvil


@pytest.fixture
def anvil_chain(anvil_binary):
    chain = node.start_anvil(anvil_binary)
    yield chain
    chain.close()


def test_a_mined_revert_is_raised_with_the_contracts_reason(anvil_chain):
    admin, platform, other = anvil_chain.dev_accounts[:3]
    m = Marketplace.deploy(anvil_chain, admin, attestation_signer=platform.address)
    with pytest.raises(ContractRevert, match="marketplace: caller is not the admin") as info:
        m.set_lease_seconds(other, 10)
    assert info.value.tx_hash is not None
    receipt = anvil_chain.w3.eth.get_transaction_receipt(info.value.tx_hash)
    assert receipt["status"] == 0  # it was mined and failed, not refused before
    m.set_lease_seconds(admin, 10)  # the nonce cache recovered
    assert m.lease_seconds() == 10


def test_out_of_gas_is_named(anvil_chain):
    admin, platform = anvil_chain.dev_accounts[:2]
    m = Marketplace.deploy(anvil_chain, admin, attestation_signer=platform.address)
    data = m.contract.encode_abi("set_lease_seconds", args=[5])
    with pytest.raises(ContractRevert, match="out of gas"):
        anvil_chain.transactor.send(admin, to=m.address, data=data, gas=22_000, function="set_lease_seconds")


def test_threads_share_one_sender_without_nonce_clashes(anvil_chain):
    admin, platform = anvil_chain.dev_accounts[:2]
    m = Marketplace.deploy(anvil_chain, admin, attestation_signer=platform.address)
    errors: list[Exception] = []

    def work(i: int) -> None:
        try:
            m.allow_measurement(admin, bytes([i + 1]) * 32)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert all(m.measurement_effective_at(bytes([i + 1]) * 32) > 0 for i in range(8))  # all announced


def test_a_killed_node_is_reported_unreachable(anvil_binary):
    chain = node.start_anvil(anvil_binary)
    url = chain.rpc_url
    chain.close()
    with pytest.raises(ChainUnavailable, match="no EVM node answers"):
        node.connect(url, timeout=2)
