"""A deployed Marketplace on a real EVM, rolled back after every test.

`chain` is parametrised over the embedded EVM (py-evm) and anvil on loopback:
every contract test that uses it runs on both. Each test starts from the same
deployed state (a chain snapshot taken once) and its changes are reverted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_account.signers.local import LocalAccount

from sterling.chain import digests, node
from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain
from sterling.chain.types import Terms
from sterling.chain.units import to_delta, to_micro

WEI_PER_ETH = 10**18
MEASUREMENT = bytes.fromhex("11" * 32)


@dataclass
class Actors:
    admin: LocalAccount
    platform: LocalAccount  # the (simulated) attestation key
    enclave: LocalAccount
    enclave2: LocalAccount
    provider: LocalAccount
    provider2: LocalAccount
    consumer: LocalAccount
    consumer2: LocalAccount
    outsider: LocalAccount


@dataclass
class Market:
    chain: Chain
    m: Marketplace
    a: Actors
    hpke_key: bytes = bytes.fromhex("22" * 32)
    measurement: bytes = MEASUREMENT

    def attest(
        self,
        enclave: LocalAccount,
        *,
        measurement: bytes = MEASUREMENT,
        signer: LocalAccount | None = None,
        hpke_key: bytes | None = None,
    ) -> bytes:
        digest = self.m.attestation_digest(
            measurement=measurement, enclave=enclave.address, hpke_public_key=hpke_key or self.hpke_key
        )
        return digests.sign_digest(signer or self.a.platform, digest)

    def register(self, enclave: LocalAccount, measurement: bytes = MEASUREMENT) -> None:
        self.m.register_enclave(
            enclave,
            measurement=measurement,
            hpke_public_key=self.hpke_key,
            attestation=self.attest(enclave, measurement=measurement),
        )

    def publish(
        self,
        provider: LocalAccount | None = None,
        *,
        budget: float = 5.0,
        cap: float = 2.0,
        price_per_job: int = 10**15,
        price_per_epsilon: int = 10**16,
        delta: float = 1e-5,
        policy: str | None = None,
        pinned: bytes | None = None,
        price_per_prediction: int = 0,
    ) -> int:
        terms = Terms(
            price_per_job,
            price_per_epsilon,
            to_micro(cap),
            policy or "0x0000000000000000000000000000000000000000",
            pinned or bytes(32),
            price_per_prediction,
        )
        return self.m.publish(
            provider or self.a.provider,
            data_uri=f"memory://blob/{os.urandom(4).hex()}",
            data_hash=os.urandom(32),
            sealed_key=os.urandom(80),
            terms=terms,
            epsilon_budget=to_micro(budget),
            delta=to_delta(delta),
        )

    def submit(
        self,
        listing_ids: list[int],
        epsilons: list[float],
        *,
        consumer: LocalAccount | None = None,
        value: int | None = None,
        delta: float = 1e-5,
        max_prices: list[int] | None = None,
    ) -> int:
        consumer = consumer or self.a.consumer
        micro = [to_micro(e) for e in epsilons]
        if value is None:
            value = sum(
                self.m.quote(consumer.address, lid, e) for lid, e in zip(listing_ids, micro, strict=True)
            )
        return self.m.submit_job(
            consumer,
            listing_ids=listing_ids,
            epsilons=micro,
            delta=to_delta(delta),
            consumer_key=os.urandom(32),
            job_hash=os.urandom(32),
            job_uri="memory://job",
            value=value,
            max_prices=max_prices,
        )

    def complete(
        self,
        job_id: int,
        *,
        payouts: list[int],
        spent: list[int],
        weights: list[int] | None = None,
        enclave: LocalAccount | None = None,
        receipt_hash: bytes | None = None,
        **kw,
    ):  # type: ignore[no-untyped-def]
        return self.m.complete_job(
            enclave or self.a.enclave,
            job_id,
            result_hash=os.urandom(32),
            model_uri="memory://model",
            sealed_model_key=os.urandom(80),
            payouts=payouts,
            spent=spent,
            weights=weights if weights is not None else [1] * len(payouts),
            receipt_hash=os.urandom(32) if receipt_hash is None else receipt_hash,
            receipt_uri="memory://receipt",
            **kw,
        )


def _make_chain(kind: str, anvil_binary) -> Chain:  # type: ignore[no-untyped-def]
    if kind == "embedded":
        return node.embedded()
    return node.start_anvil(anvil_binary)


@pytest.fixture(scope="session", params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def _deployed(request) -> Iterator[Market]:  # type: ignore[no-untyped-def]
    kind = request.param
    binary = request.getfixturevalue("anvil_binary") if kind == "anvil" else None
    chain = _make_chain(kind, binary)
    acc = chain.dev_accounts
    actors = Actors(*acc[:9])
    m = Marketplace.deploy(
        chain,
        actors.admin,
        attestation_signer=actors.platform.address,
        lease_seconds=600,
        measurements=[MEASUREMENT],
    )
    yield Market(chain, m, actors)
    chain.close()


@pytest.fixture
def market(_deployed: Market) -> Iterator[Market]:
    snap = _deployed.chain.snapshot()
    yield _deployed
    _deployed.chain.revert(snap)


@pytest.fixture
def live(market: Market) -> Market:
    """A market with one registered enclave."""
    market.register(market.a.enclave)
    return market


@pytest.fixture
def claimed(live: Market) -> tuple[Market, int, tuple[int, int]]:
    """Two listings (ε 1 and 2 reserved) in one job of 0.1 ether, claimed by the enclave."""
    a, b = live.publish(), live.publish(provider=live.a.provider2)
    jid = live.submit([a, b], [1.0, 2.0], value=WEI_PER_ETH // 10)
    live.m.claim_job(live.a.enclave, jid)
    return live, jid, (a, b)
