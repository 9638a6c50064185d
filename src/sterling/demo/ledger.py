"""The ledger half of the demo: a market of providers and one job, settled on chain.

This is the end-to-end flow that exists today: a simulated enclave is
attested and registered, providers publish listings with different terms
(one behind a credential policy, one behind an allow-list), a consumer
submits a job that reserves ε on each, the enclave settles it, and a second
job that would overspend a budget is refused by the chain with its reason.
Sealed data, DP training and appraisal replace the placeholders as their
issues land; until then the enclave settles at the quoted prices and charges
exactly the ε reserved.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sterling.chain import digests
from sterling.chain.marketplace import AllowListPolicy, CredentialPolicy, Marketplace
from sterling.chain.node import Chain
from sterling.chain.types import JobState, Terms
from sterling.chain.units import from_micro, to_delta, to_micro
from sterling.errors import ContractRevert

SIM_MEASUREMENT = hashlib.sha256(b"sterling simulated enclave (ledger demo)").digest()
GWEI = 10**9


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    price_per_job_gwei: int
    price_per_epsilon_gwei: int
    budget: float
    cap: float
    policy: str = ""  # "", "credential" or "allowlist"


PROVIDERS = (
    ProviderSpec("St Mary's Hospital", 2_000_000, 5_000_000, 6.0, 3.0, "credential"),
    ProviderSpec("Lakeside Eye Clinic", 1_000_000, 8_000_000, 4.0, 2.0),
    ProviderSpec("Dr. Okafor's practice", 500_000, 3_000_000, 3.0, 1.5, "allowlist"),
    ProviderSpec("Rural screening van", 250_000, 2_000_000, 2.0, 1.0),
    ProviderSpec("Patient co-op", 100_000, 1_000_000, 1.5, 1.5),
)


@dataclass
class LedgerReport:
    chain_id: int
    marketplace: str
    enclave: str
    providers: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    refused_job_reason: str = ""


def run(chain: Chain, *, step: Callable[[str], None] = lambda _: None) -> LedgerReport:
    """Run the ledger scenario on `chain` (anvil or embedded) with its dev accounts."""
    admin, platform, enclave, consumer, hospital = chain.dev_accounts[:5]
    providers = chain.dev_accounts[5 : 5 + len(PROVIDERS)]
    step("deploying the Marketplace")
    m = Marketplace.deploy(chain, admin, attestation_signer=platform.address, lease_seconds=900)
    step("attesting and registering a SIMULATED enclave")
    m.allow_measurement(admin, SIM_MEASUREMENT)
    hpke_key = os.urandom(32)
    att = digests.sign_digest(
        platform,
        m.attestation_digest(measurement=SIM_MEASUREMENT, enclave=enclave.address, hpke_public_key=hpke_key),
    )
    m.register_enclave(enclave, measurement=SIM_MEASUREMENT, hpke_public_key=hpke_key, attestation=att)
    report = LedgerReport(chain.chain_id, m.address, enclave.address)
    listing_ids = []
    for spec, account in zip(PROVIDERS, providers, strict=True):
        step(f"{spec.name} publishes a listing")
        policy = "0x0000000000000000000000000000000000000000"
        if spec.policy == "credential":
            cred = CredentialPolicy.deploy(chain, account, marketplace=m.address, issuer=hospital.address)
            cred.grant(hospital, consumer.address, expires=chain.now() + 30 * 86400)
            policy = cred.address
        elif spec.policy == "allowlist":
            allow = AllowListPolicy.deploy(chain, account, marketplace=m.address)
            allow.set_allowed(account, consumer.address)
            policy = allow.address
        terms = Terms(
            spec.price_per_job_gwei * GWEI, spec.price_per_epsilon_gwei * GWEI, to_micro(spec.cap), policy
        )
        listing_ids.append(
            m.publish(
                account,
                data_uri=f"file:///demo/{spec.name.split()[0].lower()}.sealed",
                data_hash=os.urandom(32),
                sealed_key=os.urandom(80),
                terms=terms,
                epsilon_budget=to_micro(spec.budget),
                delta=to_delta(1e-5),
            )
        )
    step("the consumer submits a job reserving ε on every listing")
    asks = [to_micro(min(1.0, s.cap)) for s in PROVIDERS]
    quotes = [m.quote(consumer.address, lid, eps) for lid, eps in zip(listing_ids, asks, strict=True)]
    job_id = m.submit_job(
        consumer,
        listing_ids=listing_ids,
        epsilons=asks,
        delta=to_delta(1e-5),
        consumer_key=os.urandom(32),
        job_hash=os.urandom(32),
        job_uri="file:///demo/job.sealed",
        value=sum(quotes),
    )
    step("the enclave claims and settles the job")
    m.claim_job(enclave, job_id)
    m.complete_job(
        enclave,
        job_id,
        result_hash=os.urandom(32),
        model_uri="file:///demo/model.sealed",
        sealed_model_key=os.urandom(80),
        payouts=quotes,
        spent=asks,
        weights=[1] * len(asks),
    )
    step("a second job asks for more ε than the Patient co-op has left")
    try:
        m.submit_job(
            consumer,
            listing_ids=[listing_ids[-1]],
            epsilons=[to_micro(1.0)],
            delta=to_delta(1e-5),
            consumer_key=os.urandom(32),
            job_hash=os.urandom(32),
            job_uri="file:///demo/job2.sealed",
            value=10**18,
        )
    except ContractRevert as exc:
        report.refused_job_reason = exc.reason
    job = m.job(job_id)
    for spec, account, lid in zip(PROVIDERS, providers, listing_ids, strict=True):
        listing = m.listing(lid)
        report.providers.append(
            {
                "id": lid,
                "name": spec.name,
                "address": account.address,
                "terms": listing.terms.to_json(),
                "policy_kind": spec.policy or None,
                "epsilon_spent": from_micro(listing.budget.spent),
                "epsilon_left": from_micro(listing.budget.remaining),
                "paid_wei": m.balance_of(account.address),
            }
        )
    report.jobs.append(
        {"id": job_id, "state": JobState(job.state).label, "escrow_wei": job.escrow,
         "paid_wei": sum(a.payout for a in job.allocations), "listings": job.listing_ids}
    )  # fmt: skip
    return report
