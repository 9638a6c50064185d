"""The consumer's side: the listings a job names, submitting it, watching it, and its model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState
from sterling.chain.units import from_delta, from_micro
from sterling.crypto import seal
from sterling.data.dataset import Dataset, Schema
from sterling.errors import NotFound, SterlingError, UsageError
from sterling.privacy.bundle import ModelBundle
from sterling.privacy.job import Job
from sterling.privacy.plan import TrainingPlan
from sterling.privacy.verifier import ListingView, Report, verify
from sterling.sdk.pools import pool_schema
from sterling.sdk.trust import Trust
from sterling.storage.blobs import BlobStore, fetch_verified
from sterling.storage.manifest import load_manifest

if TYPE_CHECKING:
    from sterling.index import MarketIndex

ZERO = "0x0000000000000000000000000000000000000000"


def listing_views(
    market: Marketplace,
    ids: list[int],
    *,
    consumer: str | None = None,
    epsilons: dict[int, float] | None = None,
) -> dict[int, ListingView]:
    """ListingViews from the chain and each listing's public manifest; unknown ids are left out.

    With `consumer`, listings behind a policy contract carry the price it quotes that consumer
    for the ε in `epsilons` (default: the listing's per-job cap).
    """
    views = {}
    for lid in ids:
        try:
            listing = market.listing(lid)
        except NotFound:
            continue
        try:
            manifest = load_manifest(listing.data_uri)
        except (SterlingError, OSError, ValueError) as exc:
            raise UsageError(
                f"listing {lid}: its manifest at {listing.data_uri} cannot be read ({exc})"
            ) from None
        quote = None
        if consumer is not None and listing.terms.policy != ZERO:
            asked = (epsilons or {}).get(lid)
            micro = round(asked * 10**6) if asked is not None else listing.terms.max_epsilon_per_job
            quote = market.quote(consumer, lid, micro)
        views[lid] = ListingView(
            listing_id=lid,
            schema=pool_schema(market, listing, manifest.schema),
            max_epsilon_per_job=from_micro(listing.terms.max_epsilon_per_job),
            remaining_epsilon=from_micro(listing.budget.remaining),
            delta=from_delta(listing.budget.delta),
            price_per_job_wei=listing.terms.price_per_job,
            price_per_epsilon_wei=listing.terms.price_per_epsilon,
            open=listing.open,
            quote_wei=quote,
            allowed_families=manifest.terms.allowed_model_families,
            data_hash=listing.data_hash,
        )
    return views


def views_from_json(doc: Any) -> dict[int, ListingView]:
    """ListingViews from a JSON list (for offline verification and tests)."""
    if not isinstance(doc, list):
        raise UsageError("listings file: expected a JSON list of listings")
    out = {}
    for i, item in enumerate(doc):
        try:
            fams = item.get("allowed_families")
            view = ListingView(
                listing_id=int(item["listing_id"]),
                schema=Schema.from_json(item["schema"]),
                max_epsilon_per_job=float(item["max_epsilon_per_job"]),
                remaining_epsilon=float(item["remaining_epsilon"]),
                delta=float(item["delta"]),
                price_per_job_wei=int(item.get("price_per_job_wei", 0)),
                price_per_epsilon_wei=int(item.get("price_per_epsilon_wei", 0)),
                open=bool(item.get("open", True)),
                quote_wei=int(item["quote_wei"]) if item.get("quote_wei") is not None else None,
                allowed_families=tuple(fams) if fams else None,
                data_hash=bytes.fromhex(str(item["data_hash"]).removeprefix("0x"))
                if item.get("data_hash")
                else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"listings file: item {i}: {type(exc).__name__}: {exc}") from None
        out[view.listing_id] = view
    return out


# ----------------------------------------------------------------- submitting and results


@dataclass(frozen=True)
class Submitted:
    job_id: int
    job_hash: bytes
    job_uri: str
    escrow_wei: int
    enclave: str
    report: Report

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job_hash": "0x" + self.job_hash.hex(),
            "job_uri": self.job_uri,
            "escrow_wei": self.escrow_wei,
            "enclave": self.enclave,
            "epsilon_per_listing": self.report.summary.get("epsilon_per_listing"),
            "price_per_listing_wei": self.report.summary.get("price_per_listing_wei"),
        }


class JobRejected(UsageError):
    """The verifier refused the job before anything was spent; `report` lists every violation."""

    def __init__(self, report: Report) -> None:
        self.report = report
        super().__init__(
            f"the job violates {len(report.violations)} term(s): "
            + "; ".join(v.message for v in report.violations)
        )


def submit_job(
    market: Marketplace,
    consumer: LocalAccount,
    consumer_key: X25519PrivateKey,
    job: Job,
    store: BlobStore,
    *,
    trust: Trust,
    enclave: str | None = None,
    index: MarketIndex | None = None,
) -> Submitted:
    """Verify `job`, seal its body to the enclave, store it, escrow its price and submit it.

    The body is sealed only to an enclave `trust` admits whose measurement every listing's pin
    allows (`sterling.sdk.trust.choose_enclave`), never merely the newest one registered;
    with an `index`, the candidates come from it rather than the chain's event history.

    Nothing is stored or spent unless the verifier accepts the job and every provider's
    published contract (run here, in the same sandbox the enclave uses) accepts it; the
    escrow is exactly what the chain quotes this consumer, and never more than
    the job's payment cap.
    """
    from sterling.chain.units import to_delta
    from sterling.sdk.trust import choose_enclave

    asks = {a.listing_id: a.epsilon for a in job.listings}
    views = listing_views(market, list(asks), consumer=consumer.address, epsilons=asks)
    report = verify(job, views)
    if not report.ok or report.plan is None:
        raise JobRejected(report)
    refusals = precheck_contracts(market, job, consumer=consumer.address, plan=report.plan)
    if refusals:
        raise UsageError(
            "providers' contracts would refuse this job: "
            + "; ".join(f"listing {lid}: {why}" for lid, why in refusals.items())
        )
    pins = [market.listing(lid).terms.pinned_measurement for lid in asks]
    target = choose_enclave(market, enclave, trust=trust, pins=pins, index=index)
    micro = [round(a.epsilon * 10**6) for a in job.listings]
    ids = [a.listing_id for a in job.listings]
    quotes = [market.quote(consumer.address, lid, m) for lid, m in zip(ids, micro, strict=True)]
    escrow = sum(quotes) + job.bonus_pool_wei
    if escrow > job.payment_cap_wei:
        raise UsageError(
            f"the listings now cost {sum(quotes)} wei (plus a bonus pool of {job.bonus_pool_wei}), "
            f"above the payment cap {job.payment_cap_wei}"
        )
    public_key = seal.public_bytes(consumer_key)
    binding = seal.job_body_binding(
        market.chain.chain_id, market.address, consumer=consumer.address, consumer_key=public_key
    )
    sealed = seal.seal(job.canonical(), target.hpke_public_key, binding)
    ref = store.put_bytes(sealed)
    job_id = market.submit_job(
        consumer,
        listing_ids=ids,
        epsilons=micro,
        delta=to_delta(job.training.delta),
        consumer_key=public_key,
        job_hash=ref.sha256,
        job_uri=ref.uri,
        value=escrow,
        max_prices=quotes,  # the prices this consumer saw: the chain refuses the job above them
    )
    return Submitted(job_id, ref.sha256, ref.uri, escrow, target.address, report)


@dataclass(frozen=True)
class Progress:
    """A job as a watcher sees it: its state on chain and the enclave's last public heartbeat."""

    job_id: int
    state: str
    step: int = 0
    steps: int = 0
    epsilon: float = 0.0
    reason: str = ""
    final: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "step": self.step,
            "steps": self.steps,
            "epsilon_spent": self.epsilon,
            "reason": self.reason or None,
        }


FINAL_STATES = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


def progress(market: Marketplace, job_id: int) -> Progress:
    """The job's state, and its latest heartbeat or failure reason, from the chain's events."""
    job = market.job(job_id)
    step = steps = 0
    eps = 0.0
    reason = ""
    for ev in market.job_events(job_id):
        if ev.name == "JobProgress":
            step, steps, eps = (
                int(ev.args["step"]),
                int(ev.args["steps"]),
                from_micro(int(ev.args["micro_epsilon"])),
            )
        elif ev.name == "JobFailed":
            reason = str(ev.args["reason"])
    state = job.state.label
    if job.state is JobState.CLAIMED and steps:
        state = "training"
    return Progress(job_id, state, step, steps, eps, reason, job.state in FINAL_STATES)


def watch(
    market: Marketplace,
    job_id: int,
    *,
    on_update: Callable[[Progress], None],
    poll_seconds: float = 0.5,
    timeout: float | None = None,
) -> Progress:
    """Call `on_update` whenever the job's progress changes, until it ends (or `timeout` seconds pass)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last: Progress | None = None
    while True:
        now = progress(market, job_id)
        if now != last:
            on_update(now)
            last = now
        if now.final or (deadline is not None and time.monotonic() > deadline):
            return now
        time.sleep(poll_seconds)


def fetch_result(market: Marketplace, job_id: int, consumer_key: X25519PrivateKey) -> ModelBundle:
    """Fetch the job's encrypted model, check its hash against the chain, and decrypt it."""
    from sterling.crypto import container

    job = market.job(job_id)
    if job.state is not JobState.COMPLETED:
        raise UsageError(f"job {job_id} is {job.state.label}, not completed: there is no model yet")
    if job.consumer_key != seal.public_bytes(consumer_key):
        raise UsageError(f"job {job_id} was submitted for another consumer key: yours cannot open its model")
    ciphertext = fetch_verified(job.model_uri, job.result_hash)
    binding = seal.model_key_binding(
        market.chain.chain_id, market.address, job_id=job_id, result_hash=job.result_hash
    )
    model_key = seal.unseal(job.sealed_model_key, consumer_key, binding)
    return ModelBundle.from_bytes(container.decrypt_bytes(ciphertext, model_key))


def upload_validation_set(store: BlobStore, dataset: Dataset) -> str:
    """Store your own labelled validation set for a job (`evaluation.validation_uri`); returns its URI.

    It is your data, so metrics on it are exact and cost no ε, and appraisal measures each
    provider's influence on it. It is stored as is: use a store only you and the enclave can read.
    """
    return store.put_bytes(dataset.to_bytes()).uri


def precheck_contracts(market: Marketplace, job: Job, *, consumer: str, plan: TrainingPlan) -> dict[int, str]:
    """Run each listing's published provider contract here, as the enclave will; listing → why it refuses.

    Provider contracts are public (their hash is on chain, their source beside the manifest), so a
    consumer can learn before paying which listings would refuse the job. `plan` is the
    verifier's plan for `job`. An empty result means every contract accepts.
    """
    from sterling.enclave.contracts import judge, provider_request
    from sterling.enclave.host import ChainHost
    from sterling.enclave.sandbox import Sandbox

    sandbox = Sandbox()
    public = {**job.public_view(), "id": 0, "consumer": consumer}
    refusals = {}
    for ask in job.listings:
        listing = market.listing(ask.listing_id)
        if listing.contract_hash == bytes(32):
            continue
        manifest = load_manifest(listing.data_uri)
        uri = manifest.contract.uri if manifest.contract is not None else ""
        source = fetch_verified(uri, listing.contract_hash).decode()
        request = provider_request(
            job,
            listing_id=listing.id,
            epsilon=ask.epsilon,
            consumer=consumer,
            plan=plan,
            chain_id=market.chain.chain_id,
            marketplace=market.address,
        )
        host = ChainHost(
            market, job=public, listing={**listing.to_json(), "schema": manifest.schema.to_json()}
        )
        problem = judge(sandbox, source, request, host=host)
        if problem is not None:
            refusals[listing.id] = problem
    return refusals
