"""The enclave worker: claim a job, prove it may run, train, and settle it on chain.

For each job it holds, in this order and stopping at the first refusal
(which fails the job on chain: full refund, reservation released):

1. fetch the sealed job body and check it against the hash on chain;
2. open it with the key manager (it is bound to this chain, Marketplace and
   consumer) and check it asks exactly what the chain reserved;
3. re-run the verifier against the listings as the chain shows them;
4. run every provider's contract (`check`) in the sandbox;
5. only then approve the job, so the key manager releases its data keys;
6. fetch, verify and decrypt each listing's data in memory, and execute the
   verifier's plan (`enclave/training.py`: DP-SGD, appraisal, releases), with
   heartbeats that renew the lease and report progress on a public schedule;
7. encrypt the result to the consumer, store it and the privacy receipt,
   and complete the job with a signature over the settlement.

Every outcome after the data keys are released is charged: a job whose
consumer contract drops every provider completes without a model, charged
its pilot and appraisal; a failure after training began is failed on chain
with the ε of what ran (and a fixed reason: its details stay in the
enclave's log). Before the keys are released, a refusal charges nothing.

A worker that dies leaves its lease to run out; another worker of the same
measurement (sharing the key manager) then claims the job and starts it
again. Nothing is paid or charged before completion, and completion happens
once, so nothing is paid or charged twice. Until a pilot's appraisal, what
the chain shows of a job (steps on a public schedule, the ε of that
schedule) depends on public values only, so a worker that dies before then
released nothing. One that dies after may have shown, by its pace, which
path appraisal chose: the worker that takes over charges that pilot and
its appraisal too (`prior_releases`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_account.signers.local import LocalAccount

from sterling.appraisal.payouts import payout_plan
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO32, Job, JobState, Listing
from sterling.chain.units import MICRO, from_delta, from_micro, to_delta
from sterling.crypto import container, seal
from sterling.crypto.entropy import SecretRandom
from sterling.data.dataset import Dataset
from sterling.enclave.heartbeat import Heartbeat, LeaseLost
from sterling.enclave.host import ChainHost
from sterling.enclave.keymanager import KeyManager, worker_account
from sterling.enclave.tee import SIMULATION_WARNING, TeeBackend
from sterling.errors import (
    ChainError,
    ContractError,
    ContractRevert,
    EnclaveError,
    IntegrityError,
    NotFound,
    SterlingError,
)
from sterling.privacy.job import Job as JobBody
from sterling.privacy.mechanisms import Mechanism
from sterling.privacy.plan import TrainingPlan
from sterling.privacy.receipt import Receipt, prior_name
from sterling.privacy.verifier import ListingView, verify
from sterling.storage.blobs import BlobStore, fetch_verified
from sterling.storage.manifest import Manifest

ETHER = 10**18
#: A local chain funds a new worker's gas from its first development account.
DEV_FUNDING = 10 * ETHER


class JobRefused(EnclaveError):
    """The job may not run; the reason goes on chain with `fail_job` (and the consumer is refunded)."""


#: The reason on chain for a failure after training began: fixed, so that it says nothing of the data.
FAILED_AFTER_TRAINING = "failed after training began; charged the epsilon of what ran (see the receipt)"


class ChargedFailure(EnclaveError):
    """The job failed after mechanisms ran on its data: it is failed on chain with their charge.

    `reason` is what goes on chain: the fixed FAILED_AFTER_TRAINING unless the failure's cause is
    itself public (a revert of the chain's own), never the text of an exception raised on the data.
    """

    def __init__(self, detail: str, receipt: Receipt, *, reason: str = FAILED_AFTER_TRAINING) -> None:
        super().__init__(detail)
        self.receipt = receipt
        self.reason = reason


def settlement_refused(revert_reason: str) -> str:
    """The on-chain reason when the chain refuses a settlement while this worker holds the lease."""
    return f"the chain refused the settlement ({revert_reason[:120]}); charged the epsilon of what ran"


@dataclass(frozen=True)
class WorkerOptions:
    name: str = "worker"
    poll_seconds: float = 0.5
    #: Seconds between on-chain heartbeats (progress and lease renewal); at most a third of the lease.
    progress_seconds: float = 5.0


@dataclass
class Handled:
    job_id: int
    state: str  # completed, failed, skipped
    reason: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            **self.details,
        }


def _nothing(_: str) -> None:
    return None


class Worker:
    """One enclave worker on one Marketplace."""

    def __init__(
        self,
        market: Marketplace,
        tee: TeeBackend,
        keys: KeyManager,
        account: LocalAccount,
        store: BlobStore,
        *,
        options: WorkerOptions = WorkerOptions(),
        log: Callable[[str], None] = _nothing,
        state_dir: Path | None = None,
        entropy: SecretRandom | None = None,
    ) -> None:
        from sterling.enclave.sandbox import Sandbox

        #: The enclave's secret randomness, from the operating system. Tests may pass a repeatable
        #: one (`SecretRandom.for_tests`); nothing a job holds reaches it.
        self.entropy = entropy if entropy is not None else SecretRandom.from_os()
        #: Where the enclave keeps sealed state (its keys, and models it serves); None keeps no models.
        self.state_dir = state_dir
        self.market = market
        self.tee = tee
        self.keys = keys
        self.account = account
        self.store = store
        self.options = options
        self._log = log
        self.sandbox = Sandbox()
        self._known: set[int] = set()
        self._next_id = 1

    @classmethod
    def open(
        cls,
        market: Marketplace,
        tee: TeeBackend,
        state_dir: Path,
        store: BlobStore,
        *,
        options: WorkerOptions = WorkerOptions(),
        log: Callable[[str], None] = _nothing,
        entropy: SecretRandom | None = None,
    ) -> Worker:
        """A worker whose keys live (sealed) in `state_dir`; created on first use."""
        keys = KeyManager(tee, state_dir)
        account = worker_account(tee, state_dir, options.name)
        return cls(
            market, tee, keys, account, store, options=options, log=log, state_dir=state_dir, entropy=entropy
        )

    # ------------------------------------------------------------ status

    @property
    def address(self) -> str:
        return str(self.account.address)

    def log(self, message: str) -> None:
        prefix = "[SIMULATION] " if self.tee.simulated else ""
        self._log(f"{prefix}{self.options.name}: {message}")

    def status(self) -> dict[str, Any]:
        return {
            "worker": self.options.name,
            "address": self.address,
            "backend": self.tee.name,
            "simulated": self.tee.simulated,
            "mode": SIMULATION_WARNING if self.tee.simulated else "hardware",
            "measurement": "0x" + self.tee.measurement().hex(),
            "hpke_public_key": "0x" + self.keys.public_key.hex(),
            "registered": self.market.is_enclave(self.address),
            "chain_id": self.market.chain.chain_id,
            "marketplace": self.market.address,
        }

    # ---------------------------------------------------------- register

    def register(self, *, admin: LocalAccount | None = None) -> bool:
        """Register on chain if not yet registered; returns whether it registered now.

        `admin` (the Marketplace admin, on a development chain) also allow-lists the measurement.
        """
        if self.market.is_enclave(self.address):
            return False
        chain = self.market.chain
        local = chain.kind in ("anvil", "embedded") and bool(chain.dev_accounts)
        if local and chain.w3.eth.get_balance(self.account.address) < ETHER:
            self.log("funding the worker's gas from the local chain's development account")
            chain.fund(self.address, DEV_FUNDING)
        measurement = self.tee.measurement()
        if admin is not None and not self.market.measurement_allowed(measurement):
            self.market.allow_measurement_now(admin, measurement)  # a dev chain: announce, wait the delay
        if not self.market.measurement_allowed(measurement):
            raise EnclaveError(
                f"measurement 0x{measurement.hex()} is not allowed on this Marketplace: the admin must "
                "allow it (`sterling enclave register --allow` on a development chain)"
            )
        attest = getattr(self.tee, "attest", None)
        if attest is None:
            raise EnclaveError(
                f"{self.tee.name} evidence must be verified by an attestation service, which signs the "
                "attestation digest with the key the Marketplace trusts; that is out of scope here"
            )
        attestation = attest(
            chain_id=chain.chain_id,
            marketplace=self.market.address,
            enclave=self.address,
            hpke_public_key=self.keys.public_key,
        )
        self.market.register_enclave(
            self.account,
            measurement=measurement,
            hpke_public_key=self.keys.public_key,
            attestation=attestation,
        )
        self.log(f"registered {self.address} with measurement 0x{measurement.hex()[:16]}…")
        return True

    # -------------------------------------------------------------- loop

    def _now(self) -> int:
        # A local chain's latest block may be old when nothing was mined since; new blocks take the
        # chain's clock (ahead of wall time when it was moved on), or wall time.
        return max(self.market.chain.next_block_time(), int(time.time()))

    def claimable(self) -> list[int]:
        """Jobs this worker may take now: pending, leased to it, or whose lease ran out."""
        count = self.market.job_count()
        self._known.update(range(self._next_id, count + 1))
        self._next_id = count + 1
        out = []
        now = self._now()
        for job_id in sorted(self._known):
            job = self.market.job(job_id)
            if job.state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
                self._known.discard(job_id)
            elif job.state is JobState.PENDING or (
                job.state is JobState.CLAIMED
                and (job.enclave.lower() == self.address.lower() or now > job.lease_deadline)
            ):
                out.append(job_id)
        return out

    def poll(self) -> list[Handled]:
        """Take and run every job claimable now."""
        return [self.process(job_id) for job_id in self.claimable()]

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set. A chain that stops answering is waited for, not fatal."""
        self.log(f"watching Marketplace {self.market.address} on chain {self.market.chain.chain_id}")
        while not stop.is_set():
            try:
                self.poll()
            except (ChainError, OSError) as exc:  # OSError: web3's HTTP transport found no node
                self.log(f"chain unavailable, retrying: {type(exc).__name__}: {str(exc)[:160]}")
            stop.wait(self.options.poll_seconds)

    # ------------------------------------------------------------ one job

    def process(self, job_id: int) -> Handled:
        started = time.monotonic()
        job = self.market.job(job_id)
        mine = job.state is JobState.CLAIMED and job.enclave.lower() == self.address.lower()
        resumed = mine and self._now() <= job.lease_deadline
        if resumed:
            self.log(f"job {job_id}: resuming the job this worker holds")
        else:
            try:
                self.market.claim_job(self.account, job_id)
            except ContractRevert as exc:
                return Handled(job_id, "skipped", exc.reason, time.monotonic() - started)
            self.log(f"job {job_id}: claimed")
        interval = min(self.options.progress_seconds, self.market.lease_seconds() / 3)
        try:
            with Heartbeat(self.market, self.account, job_id, interval=interval, log=self.log) as beat:
                details = self._run(job_id, beat, resumed=resumed)
        except JobRefused as exc:
            return self._fail(job_id, str(exc), started)
        except ChargedFailure as exc:
            self.log(f"job {job_id}: {exc}")
            return self._fail(job_id, exc.reason, started, receipt=exc.receipt)
        except LeaseLost as exc:
            self.log(f"job {job_id}: {exc}")
            return Handled(job_id, "skipped", str(exc), time.monotonic() - started)
        except (ChainError, OSError):
            raise  # the node is unreachable: the lease runs out and a worker retries the job later
        except Exception as exc:  # noqa: BLE001 - a bug must fail (and refund) one job, not stop the worker
            return self._fail(job_id, f"internal enclave error: {type(exc).__name__}: {exc}", started)
        finally:
            self.keys.forget(self.market, job_id)
        self.log(f"job {job_id}: completed in {time.monotonic() - started:.1f} s")
        return Handled(job_id, "completed", "", time.monotonic() - started, details)

    def _holds(self, job_id: int) -> bool:
        """Whether this worker still holds `job_id`'s lease (so a revert was not about the lease)."""
        job = self.market.job(job_id)
        return (
            job.state is JobState.CLAIMED
            and job.enclave.lower() == self.address.lower()
            and self._now() <= job.lease_deadline
        )

    def _fail(self, job_id: int, reason: str, started: float, *, receipt: Receipt | None = None) -> Handled:
        self.log(f"job {job_id}: failed: {reason}")
        try:
            if receipt is None:
                self.market.fail_job(self.account, job_id, reason=reason)
            else:
                ref = self.store.put_bytes(receipt.to_bytes())
                self.market.fail_job(
                    self.account,
                    job_id,
                    reason=reason,
                    spent=receipt.micro_epsilon,
                    receipt_hash=ref.sha256,
                    receipt_uri=ref.uri,
                )
        except ContractRevert as revert:
            return Handled(job_id, "skipped", f"could not fail the job: {revert.reason}")
        return Handled(job_id, "failed", reason, time.monotonic() - started)

    def _run(self, job_id: int, beat: Heartbeat, *, resumed: bool = False) -> dict[str, Any]:
        market = self.market
        job = market.job(job_id)
        body = self._open_body(job)
        listings = [market.listing(a.listing_id) for a in job.allocations]
        manifests = [self._manifest(listing) for listing in listings]
        report = verify(body, self._views(job, listings, manifests))
        if not report.ok or report.plan is None:
            raise JobRefused("verification failed: " + "; ".join(v.message for v in report.violations))
        plan = report.plan
        self.log(
            f"job {job_id}: verified ({body.model.family}, up to ε {report.summary['epsilon_total']:.3f})"
        )
        self._check_contracts(job, body, listings, manifests, plan)
        self.keys.approve(market, job_id)
        datasets = [
            self._decrypt(job_id, listing, manifest)
            for listing, manifest in zip(listings, manifests, strict=True)
        ]
        validation = self._validation(body)
        prior = self.prior_releases(job, plan, resumed=resumed)
        outcome = self._train(job, body, plan, datasets, validation, beat, prior)
        beat.check()
        return self._settle(job, body, manifests, plan, outcome)

    # ---- steps of _run

    def _open_body(self, job: Job) -> JobBody:
        try:
            sealed = fetch_verified(job.job_uri, job.job_hash)
        except (SterlingError, OSError) as exc:
            raise JobRefused(f"the job body is missing or corrupt in storage: {exc}") from None
        try:
            raw = self.keys.open(
                sealed,
                seal.job_body_binding(
                    self.market.chain.chain_id,
                    self.market.address,
                    consumer=job.consumer,
                    consumer_key=job.consumer_key,
                ),
            )
        except SterlingError:
            raise JobRefused(
                "the job body does not open here: it is not sealed to this enclave for this consumer, "
                "chain and Marketplace"
            ) from None
        try:
            body = JobBody.parse(raw, source="job body")
        except SterlingError as exc:
            raise JobRefused(str(exc)) from None
        asked = [(a.listing_id, round(a.epsilon * MICRO)) for a in body.listings]
        reserved = [(a.listing_id, a.reserved) for a in job.allocations]
        if asked != reserved:
            raise JobRefused(
                f"the job body asks {asked} (listing, micro-ε) but the chain reserved {reserved}"
            )
        if to_delta(body.training.delta) != job.delta:
            raise JobRefused(
                f"the job body's δ {body.training.delta:g} differs from the chain's {from_delta(job.delta):g}"
            )
        return body

    def _manifest(self, listing: Listing) -> Manifest:
        from sterling.storage.manifest import load_manifest

        try:
            return load_manifest(listing.data_uri)
        except (SterlingError, OSError, ValueError, KeyError) as exc:
            raise JobRefused(f"listing {listing.id}: its manifest cannot be read ({exc})") from None

    def _views(self, job: Job, listings: list[Listing], manifests: list[Manifest]) -> dict[int, ListingView]:
        """The listings as the chain shows them, with this job's own reservation added back."""
        own: dict[bytes, int] = {}
        for a, listing in zip(job.allocations, listings, strict=True):
            own[listing.data_hash] = own.get(listing.data_hash, 0) + a.reserved
        views = {}
        for a, listing, manifest in zip(job.allocations, listings, manifests, strict=True):
            views[listing.id] = ListingView(
                listing_id=listing.id,
                schema=manifest.schema,
                max_epsilon_per_job=from_micro(listing.terms.max_epsilon_per_job),
                remaining_epsilon=from_micro(listing.budget.remaining + own[listing.data_hash]),
                delta=from_delta(listing.budget.delta),
                price_per_job_wei=listing.terms.price_per_job,
                price_per_epsilon_wei=listing.terms.price_per_epsilon,
                open=listing.active,
                quote_wei=a.price,
                allowed_families=manifest.terms.allowed_model_families,
                data_hash=listing.data_hash,
            )
        return views

    def _check_contracts(
        self,
        job: Job,
        body: JobBody,
        listings: list[Listing],
        manifests: list[Manifest],
        plan: TrainingPlan,
    ) -> None:
        from sterling.enclave.contracts import judge, provider_request

        public = {**body.public_view(), "id": job.id, "consumer": job.consumer}
        for ask, listing, manifest in zip(body.listings, listings, manifests, strict=True):
            if listing.contract_hash == ZERO32:
                continue
            uri = manifest.contract.uri if manifest.contract is not None else ""
            try:
                source = fetch_verified(uri, listing.contract_hash).decode()
            except (SterlingError, OSError, UnicodeDecodeError) as exc:
                raise JobRefused(
                    f"listing {listing.id}: its contract is missing or corrupt ({exc})"
                ) from None
            request = provider_request(
                body,
                listing_id=listing.id,
                epsilon=ask.epsilon,
                consumer=job.consumer,
                plan=plan,
                chain_id=self.market.chain.chain_id,
                marketplace=self.market.address,
            )
            host = ChainHost(
                self.market, job=public, listing={**listing.to_json(), "schema": manifest.schema.to_json()}
            )
            problem = judge(self.sandbox, source, request, host=host)
            if problem is not None:
                raise JobRefused(f"listing {listing.id}: {problem}")
        self.log(f"job {job.id}: every provider contract accepts")

    def _decrypt(self, job_id: int, listing: Listing, manifest: Manifest) -> Dataset:
        try:
            key = self.keys.data_key(self.market, job_id, listing, worker=self.address)
        except IntegrityError as exc:  # sealed for another listing, provider, chain or enclave
            raise JobRefused(str(exc)) from None
        uri = manifest.ciphertext.uri if manifest.ciphertext is not None else ""
        try:
            plain = container.decrypt_bytes(fetch_verified(uri, listing.data_hash), key)
            dataset = Dataset.from_bytes(plain, source=f"listing {listing.id}")
        except (SterlingError, OSError) as exc:
            # The chain keeps 256 bytes of reason: the blob's name and what is wrong with it come
            # first, in a few words, and the URI (which can be long) last.
            if isinstance(exc, NotFound):
                why = "no blob there"
            elif isinstance(exc, IntegrityError) and "content hash differs" in str(exc):
                why = "corrupt: its content hash differs from the published one"
            else:
                why = str(exc)
            raise JobRefused(
                f"listing {listing.id} (blob {listing.data_hash.hex()}): its data is missing or corrupt "
                f"in storage: {why} ({uri})"
            ) from None
        if dataset.schema != manifest.schema:
            raise JobRefused(f"listing {listing.id}: its data does not match the schema it was listed with")
        return dataset

    def _validation(self, body: JobBody) -> Dataset | None:
        uri = body.evaluation.validation_uri
        if uri is None:
            return None
        try:
            digest = bytes.fromhex(uri.rstrip("/").rsplit("/", 1)[-1])
            return Dataset.from_bytes(fetch_verified(uri, digest), source="the validation set")
        except (SterlingError, OSError, ValueError) as exc:
            raise JobRefused(f"the validation set at {uri} cannot be used ({exc})") from None

    def prior_releases(self, job: Job, plan: TrainingPlan, *, resumed: bool) -> tuple[Mechanism, ...]:
        """What earlier holders of this job may have made public before they died, to be charged now.

        Only a job that appraises a pilot has a path chosen by its data before settlement, and a
        holder shows which only once past the pilot (its pace and its steps change). So each
        earlier holder whose last reported step passed the pilot is charged that pilot and its
        appraisal releases, as the receipt names them (`prior.<n>.…`). A resumed job's own claim
        was an earlier holder too (a restarted worker lost its run).
        """
        if not plan.retrains:
            return ()
        holders: list[int] = []  # the highest step each claim reported
        for ev in self.market.job_events(job.id):
            if ev.name == "JobClaimed":
                holders.append(0)
            elif ev.name == "JobProgress" and holders:
                holders[-1] = max(holders[-1], int(ev.args["step"]))
        earlier = holders if resumed else holders[:-1]
        prior: list[Mechanism] = []
        for n, reached in enumerate(earlier, start=1):
            if reached > (plan.pilot_steps or 0):
                prior += [prior_name(n, m) for m in (plan.pilot, *plan.appraisal)]
        if prior:
            self.log(f"job {job.id}: an earlier holder passed its pilot; its appraisal is charged too")
        return tuple(prior)

    def _train(
        self,
        job: Job,
        body: JobBody,
        plan: TrainingPlan,
        datasets: list[Dataset],
        validation: Dataset | None,
        beat: Heartbeat,
        prior: tuple[Mechanism, ...],
    ) -> Any:
        from sterling.enclave.training import Training

        # Progress is public: steps on the plan's schedule (a pilot and a second run while one may
        # follow) and the ε of the worst path so far, whichever path the data chose.
        beat.plan(plan.schedule_steps, plan.progress_epsilon)
        training = None
        try:
            training = Training(
                body,
                plan,
                datasets,
                listing_ids=[a.listing_id for a in job.allocations],
                rng=self.entropy.child(f"job:{self.market.chain.chain_id}:{self.market.address}:{job.id}"),
                validation=validation,
                keep=self._keep_hook(job, body),
                progress=beat.update,
                prior=prior,
                reserved_epsilon=min(a.reserved for a in job.allocations) / MICRO,
            )
            outcome = training.run()
        except LeaseLost:
            raise
        except Exception as exc:
            ran = training.ledger.mechanisms() if training is not None else [list(prior) for _ in datasets]
            if not any(ran):
                if isinstance(exc, SterlingError):
                    raise JobRefused(f"training could not start: {exc}") from None
                raise
            receipt = Receipt.build(
                chain_id=self.market.chain.chain_id,
                marketplace=self.market.address,
                job_id=job.id,
                outcome="failed",
                plan=plan,
                ran=ran,
            )
            raise ChargedFailure(f"{type(exc).__name__}: {exc}", receipt) from None
        beat.finish(int(outcome.info["steps_run"]))
        return outcome

    def _keep_hook(self, job: Job, body: JobBody) -> Any:
        """The consumer contract's `keep(values)`, or None. Its failure keeps every provider.

        Training has already touched the data when it runs, so a failing hook must not fail the
        job (which would charge no ε): the job goes on with everyone and the consumer is told.
        """
        from sterling.enclave.contracts import run_hook

        source = body.contract
        if source is None or not self.sandbox.defines(source, "keep"):
            return None
        public = {**body.public_view(), "id": job.id, "consumer": job.consumer}

        def keep(values: dict[str, float]) -> list[int]:
            try:
                chosen = run_hook(
                    self.sandbox, source, "keep", values, host=ChainHost(self.market, job=public, listing={})
                )
            except ContractError as exc:
                self.log(
                    f"job {job.id}: the consumer contract's keep() failed ({exc.kind}); "
                    "keeping every provider"
                )
                return [int(k) for k in values]
            return [int(k) for k in values] if chosen is None else list(chosen)

        return keep

    def _settle(
        self, job: Job, body: JobBody, manifests: list[Manifest], plan: TrainingPlan, outcome: Any
    ) -> dict[str, Any]:
        chain = self.market.chain
        receipt = Receipt.build(
            chain_id=chain.chain_id,
            marketplace=self.market.address,
            job_id=job.id,
            outcome="model" if outcome.has_model else "no_model",
            plan=plan,
            ran=outcome.ran,
        )
        receipt_ref = self.store.put_bytes(receipt.to_bytes())
        outcome.bundle.info["receipt_sha256"] = "0x" + receipt_ref.hex
        model_key = AESGCM.generate_key(bit_length=256)
        ref = self.store.put_bytes(container.encrypt_bytes(outcome.bundle.to_bytes(), model_key))
        binding = seal.model_key_binding(
            chain.chain_id, self.market.address, job_id=job.id, result_hash=ref.sha256
        )
        sealed_key = seal.seal(model_key, job.consumer_key, binding)
        spent = [min(a.reserved, m) for a, m in zip(job.allocations, receipt.micro_epsilon, strict=True)]
        fees = [m.terms.appraisal_fee_wei for m in manifests]
        payouts = payout_plan(
            prices=[a.price for a in job.allocations],
            kept=outcome.kept,
            appraisal_fees=fees,
            values=list(outcome.appraisal.per_provider),
            bonus_pool=min(body.bonus_pool_wei, max(0, job.escrow - sum(a.price for a in job.allocations))),
        )
        # No model, no predictions to pay for: zero weights make the chain refuse a prediction fee.
        weights = outcome.appraisal.weights() if outcome.has_model else [0] * len(job.allocations)
        if self.state_dir is not None and outcome.has_model:
            from sterling.enclave import serving

            path = serving.serving_path(self.state_dir, self.market, job.id)
            serving.save(self.tee, path, outcome.bundle, outcome.attribution)
        try:
            self.market.complete_job(
                self.account,
                job.id,
                result_hash=ref.sha256,
                model_uri=ref.uri,
                sealed_model_key=sealed_key,
                payouts=payouts,
                spent=spent,
                weights=weights,
                receipt_hash=receipt_ref.sha256,
                receipt_uri=receipt_ref.uri,
            )
        except ContractRevert as exc:
            if not self._holds(job.id):
                raise LeaseLost(f"could not settle ({exc.reason})") from None
            # Still ours, so the chain refuses what it was sent: retrying would refuse it again, and
            # the job would stay claimed forever. Fail it (consumer refunded) with what ran charged.
            failed = Receipt.build(
                chain_id=chain.chain_id,
                marketplace=self.market.address,
                job_id=job.id,
                outcome="failed",
                plan=plan,
                ran=outcome.ran,
            )
            raise ChargedFailure(str(exc), failed, reason=settlement_refused(exc.reason)) from None
        return {
            "model_uri": ref.uri,
            "model_released": outcome.has_model,
            "receipt_uri": receipt_ref.uri,
            "epsilon_spent": outcome.epsilon_spent,
            "steps": outcome.steps,
            "payouts_wei": payouts,
            "weights": weights,
            "appraisal": outcome.appraisal.method,
            "kept": outcome.kept,
        }
