"""A whole market in one process on the embedded EVM: chain, simulated enclave, providers, a consumer.

Nothing of Sterling's is replaced: the Marketplace runs on py-evm, data is
really encrypted, sealed and stored, the worker really verifies, runs the
provider contracts in WebAssembly, trains with DP-SGD and settles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account.signers.local import LocalAccount

from sterling.chain import node
from sterling.chain.deploy import ensure_deployment
from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain
from sterling.data.dataset import Dataset, Schema
from sterling.enclave.tee import SimulatedTee
from sterling.enclave.worker import Worker, WorkerOptions
from sterling.privacy.graph import template
from sterling.privacy.job import Job
from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset
from sterling.sdk.trust import Trust
from sterling.storage.blobs import BlobStore

FEATURES = 6
WEIGHTS = np.array([1.5, -2.0, 1.0, 0.5, -1.0, 2.0])


def tabular(rows: int, seed: int, *, noise: bool = False) -> Dataset:
    """A separable two-class task (or, with `noise`, random features and labels of the same shape)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (x @ WEIGHTS > 0).astype(np.int64)
    if noise:
        x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
        y = rng.integers(0, 2, rows).astype(np.int64)
    return Dataset(x, y, Schema("tabular", (FEATURES,), "float32", ("healthy", "sick"), rows))


@dataclass
class World:
    chain: Chain
    market: Marketplace
    state: Path
    store: BlobStore
    worker: Worker
    admin: LocalAccount
    consumer: LocalAccount
    consumer_key: X25519PrivateKey
    providers: list[LocalAccount]
    #: What the world's clients seal to: its own simulated enclave, trusted by name (never "any").
    trust: Trust
    listings: list[int] = field(default_factory=list)

    def list_data(
        self,
        dataset: Dataset,
        *,
        provider: int = 0,
        contract: str | None = None,
        budget: float = 5.0,
        cap: float = 2.0,
        price_per_job: int = 10**15,
        price_per_epsilon: int = 10**15,
    ) -> int:
        sealed = seal_dataset(dataset, self.store, name=f"p{provider}", contract_source=contract)
        terms = ListingTerms(price_per_job, price_per_epsilon, budget, cap, 1e-5)
        result = publish(
            self.market,
            self.providers[provider],
            sealed,
            terms,
            enclave=choose_enclave(self.market, trust=self.trust),
        )
        self.listings.append(result.listing_id)
        return result.listing_id

    def job(self, listing_ids: list[int], **overrides: Any) -> Job:
        doc: dict[str, Any] = {
            "name": "test job",
            "purpose": "research",
            "listings": [{"listing_id": lid, "epsilon": 1.0} for lid in listing_ids],
            "model": template("logistic_regression", classes=2).model_dump(mode="json"),
            # Under replace-one accounting σ at ε 0.8 is about 9: fewer, larger steps at a larger
            # rate reach 0.91-0.96 on this task (6 secret streams), where 60 steps of 64 at 1.0 with
            # momentum fell to 0.78.
            "training": {
                "steps": 20,
                "expected_batch_size": 128,
                "target_epsilon": 0.8,
                "learning_rate": 2.0,
                "clipping_norm": 1.0,
                "optimizer": "sgd",
            },
            "evaluation": {"holdout_fraction": 0.2, "metrics": ["accuracy"], "metrics_epsilon": 0.1},
            "payment_cap_wei": 10**18,
        }
        for key, value in overrides.items():
            doc[key] = {**doc[key], **value} if isinstance(value, dict) and key in doc else value
        return Job.parse(doc)


def make_world(tmp_path: Path, *, lease_seconds: int = 600) -> World:
    chain = node.embedded()
    state = tmp_path / "chain"
    admin = chain.dev_accounts[0]
    deployment, _ = ensure_deployment(chain, state, deployer=admin, lease_seconds=lease_seconds)
    market = Marketplace.at(chain, deployment.marketplace)
    store = BlobStore(tmp_path / "blobs")
    tee = SimulatedTee(state)
    worker = Worker.open(
        market,
        tee,
        state / "enclave",
        store,
        options=WorkerOptions(name="w1", progress_seconds=0.0),
    )
    worker.register(admin=admin)
    consumer = chain.dev_accounts[1]
    return World(
        chain=chain,
        market=market,
        state=state,
        store=store,
        worker=worker,
        admin=admin,
        consumer=consumer,
        consumer_key=X25519PrivateKey.generate(),
        providers=chain.dev_accounts[2:6],
        trust=Trust.of(tee.measurement(), tee.platform_key.address, simulated=True, note="the test world's"),
    )
