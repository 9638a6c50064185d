"""A deployed Marketplace on a real EVM with real blobs, and what the index tests do to it.

Listings carry real manifests in a content-addressed folder, jobs go through the real
lifecycle (submit, claim, progress, complete with an enclave signature), and every figure the
tests check is read back from the chain itself, never written down by hand.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from sterling.chain import digests
from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain
from sterling.chain.types import Terms
from sterling.chain.units import to_delta, to_micro
from sterling.storage.blobs import BlobRef, BlobStore
from sterling.storage.manifest import MANIFEST_FORMAT

MEASUREMENT = bytes.fromhex("11" * 32)
HPKE = bytes.fromhex("22" * 32)


def manifest(name: str, description: str, classes: list[str], rows: int) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "description": description,
        "schema": {
            "modality": "tabular",
            "shape": [4],
            "dtype": "float32",
            "classes": classes,
            "rows": rows,
            "feature_names": None,
        },
        "ciphertext": {"uri": "file:///nowhere/" + "00" * 32, "sha256": "0x" + "00" * 32},
        "contract": None,
        "terms": {"allowed_model_families": ["logistic_regression"], "appraisal_fee_wei": 0},
    }


@dataclass
class World:
    chain: Chain
    market: Marketplace
    store: BlobStore
    admin: LocalAccount
    platform: LocalAccount
    enclave: LocalAccount
    providers: list[LocalAccount]
    consumer: LocalAccount

    @classmethod
    def deploy(cls, chain: Chain, root: Path) -> World:
        acc = chain.dev_accounts
        market = Marketplace.deploy(
            chain, acc[0], attestation_signer=acc[1].address, lease_seconds=600, measurements=[MEASUREMENT]
        )
        return cls(chain, market, BlobStore(root / "blobs"), acc[0], acc[1], acc[2], [acc[3], acc[4]], acc[5])

    def register_enclave(self) -> None:
        digest = self.market.attestation_digest(
            measurement=MEASUREMENT, enclave=self.enclave.address, hpke_public_key=HPKE
        )
        self.market.register_enclave(
            self.enclave,
            measurement=MEASUREMENT,
            hpke_public_key=HPKE,
            attestation=digests.sign_digest(self.platform, digest),
        )

    def put_manifest(self, doc: dict[str, Any]) -> BlobRef:
        return self.store.put_bytes(json.dumps(doc).encode())

    def publish(
        self,
        doc: dict[str, Any] | None = None,
        *,
        provider: int = 0,
        price_per_job: int = 10**15,
        price_per_epsilon: int = 10**15,
        cap: float = 2.0,
        budget: float = 5.0,
    ) -> int:
        ref = self.put_manifest(doc or manifest("plain", "nothing special", ["a", "b"], 10))
        terms = Terms(price_per_job, price_per_epsilon, to_micro(cap))
        return self.market.publish(
            self.providers[provider],
            data_uri=ref.uri,
            data_hash=os.urandom(32),
            sealed_key=os.urandom(80),
            terms=terms,
            epsilon_budget=to_micro(budget),
            delta=to_delta(1e-5),
        )

    def submit(self, listing_ids: list[int], epsilons: list[float]) -> int:
        micro = [to_micro(e) for e in epsilons]
        value = sum(
            self.market.quote(self.consumer.address, lid, m)
            for lid, m in zip(listing_ids, micro, strict=True)
        )
        return self.market.submit_job(
            self.consumer,
            listing_ids=listing_ids,
            epsilons=micro,
            delta=to_delta(1e-5),
            consumer_key=os.urandom(32),
            job_hash=os.urandom(32),
            job_uri="memory://job",
            value=value,
        )

    def run(self, job_id: int, *, spent: list[float]) -> None:
        """Claim, report progress and complete `job_id`, paying each listing its price."""
        self.market.claim_job(self.enclave, job_id)
        self.market.report_progress(
            self.enclave, job_id, step=5, steps=10, micro_epsilon=to_micro(sum(spent) / 2)
        )
        job = self.market.job(job_id)
        self.market.complete_job(
            self.enclave,
            job_id,
            result_hash=os.urandom(32),
            model_uri="memory://model",
            sealed_model_key=os.urandom(80),
            payouts=[a.price for a in job.allocations],
            spent=[to_micro(s) for s in spent],
            weights=[1] * len(spent),
            receipt_hash=os.urandom(32),
            receipt_uri="memory://receipt",
        )
