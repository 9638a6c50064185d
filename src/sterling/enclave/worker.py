"""The enclave worker: claim a job, prove it may run, train, and settle it on chain.

For each job it holds, in this order and stopping at the first refusal
(which fails the job on chain: full refund, reservation released):

1. fetch the sealed job body and check it against the hash on chain;
2. open it with the key manager (it is bound to this chain, Marketplace and
   consumer) and check it asks exactly what the chain reserved;
3. re-run the verifier against the listings as the chain shows them;
4. run every provider's contract (`check`) in the sandbox;
5. only then approve the job, so the key manager releases its data keys;
6. fetch, verify and decrypt each listing's data in memory, train with
   DP-SGD (heartbeats with public progress renew the lease), evaluate,
   appraise;
7. encrypt the model to the consumer, store it, and complete the job with a
   signature over the settlement.

A worker that dies leaves its lease to run out; another worker of the same
measurement (sharing the key manager) then claims the job and starts it
again. Nothing is paid or charged before completion, and completion happens
once, so nothing is paid or charged twice.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO32, Job, JobState, Listing
from sterling.chain.units import MICRO, from_delta, from_micro, to_delta
from sterling.crypto import container, seal
from sterling.data.dataset import Dataset, Schema
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
from sterling.privacy import accountant
from sterling.privacy.job import Job as JobBody
from sterling.privacy.verifier import ListingView, verify
from sterling.storage.blobs import BlobStore, fetch_verified

ETHER = 10**18
#: A local chain funds a new worker's gas from its first development account.
DEV_FUNDING = 10 * ETHER


class JobRefused(EnclaveError):
    """The job may not run; the reason goes on chain with `fail_job` (and the consumer is refunded)."""


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
    ) -> None:
        from sterling.enclave.sandbox import Sandbox

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
    ) -> Worker:
        """A worker whose keys live (sealed) in `state_dir`; created on first use."""
        keys = KeyManager(tee, state_dir)
        account = worker_account(tee, state_dir, options.name)
        return cls(market, tee, keys, account, store, options=options, log=log, state_dir=state_dir)

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
            self.market.allow_measurement(admin, measurement)
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
        # A local chain's latest block may be old when nothing was mined since; new blocks take wall time.
        return max(self.market.chain.now(), int(time.time()))

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
        if mine and self._now() <= job.lease_deadline:
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
                details = self._run(job_id, beat)
        except JobRefused as exc:
            return self._fail(job_id, str(exc), started)
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

    def _fail(self, job_id: int, reason: str, started: float) -> Handled:
        self.log(f"job {job_id}: failed: {reason}")
        try:
            self.market.fail_job(self.account, job_id, reason=reason)
        except ContractRevert as revert:
            return Handled(job_id, "skipped", f"could not fail the job: {revert.reason}")
        return Handled(job_id, "failed", reason, time.monotonic() - started)

    def _run(self, job_id: int, beat: Heartbeat) -> dict[str, Any]:
        market = self.market
        job = market.job(job_id)
        body = self._open_body(job)
        listings = [market.listing(a.listing_id) for a in job.allocations]
        manifests = [self._manifest(listing) for listing in listings]
        report = verify(body, self._views(job, listings, manifests))
        if not report.ok:
            raise JobRefused("verification failed: " + "; ".join(v.message for v in report.violations))
        self.log(f"job {job_id}: verified ({body.model.family}, ε {report.summary['epsilon_total']:.3f})")
        self._check_contracts(job, body, listings, manifests, report.summary)
        self.keys.approve(market, job_id)
        datasets = [
            self._decrypt(job_id, listing, manifest)
            for listing, manifest in zip(listings, manifests, strict=True)
        ]
        validation = self._validation(body)
        outcome = self._train(job, body, report.summary, datasets, validation, beat)
        beat.check()
        return self._settle(job, body, manifests, outcome)

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

    def _manifest(self, listing: Listing) -> dict[str, Any]:
        from sterling.storage.manifest import read_manifest

        try:
            manifest = read_manifest(listing.data_uri)
            Schema.from_json(manifest["schema"])
        except (SterlingError, OSError, ValueError, KeyError) as exc:
            raise JobRefused(f"listing {listing.id}: its manifest cannot be read ({exc})") from None
        return manifest

    def _views(
        self, job: Job, listings: list[Listing], manifests: list[dict[str, Any]]
    ) -> dict[int, ListingView]:
        """The listings as the chain shows them, with this job's own reservation added back."""
        own: dict[bytes, int] = {}
        for a, listing in zip(job.allocations, listings, strict=True):
            own[listing.data_hash] = own.get(listing.data_hash, 0) + a.reserved
        views = {}
        for a, listing, manifest in zip(job.allocations, listings, manifests, strict=True):
            families = (manifest.get("terms") or {}).get("allowed_model_families")
            views[listing.id] = ListingView(
                listing_id=listing.id,
                schema=Schema.from_json(manifest["schema"]),
                max_epsilon_per_job=from_micro(listing.terms.max_epsilon_per_job),
                remaining_epsilon=from_micro(listing.budget.remaining + own[listing.data_hash]),
                delta=from_delta(listing.budget.delta),
                price_per_job_wei=listing.terms.price_per_job,
                price_per_epsilon_wei=listing.terms.price_per_epsilon,
                open=listing.active,
                quote_wei=a.price,
                allowed_families=tuple(families) if families else None,
            )
        return views

    def _check_contracts(
        self,
        job: Job,
        body: JobBody,
        listings: list[Listing],
        manifests: list[dict[str, Any]],
        summary: dict[str, Any],
    ) -> None:
        from sterling.enclave.contracts import judge, provider_request

        public = {**body.public_view(), "id": job.id, "consumer": job.consumer}
        for ask, listing, manifest in zip(body.listings, listings, manifests, strict=True):
            if listing.contract_hash == ZERO32:
                continue
            ref = manifest.get("contract") or {}
            try:
                source = fetch_verified(str(ref.get("uri", "")), listing.contract_hash).decode()
            except (SterlingError, OSError, UnicodeDecodeError) as exc:
                raise JobRefused(
                    f"listing {listing.id}: its contract is missing or corrupt ({exc})"
                ) from None
            request = provider_request(
                body,
                listing_id=listing.id,
                epsilon=ask.epsilon,
                consumer=job.consumer,
                summary=summary,
                chain_id=self.market.chain.chain_id,
                marketplace=self.market.address,
            )
            host = ChainHost(
                self.market, job=public, listing={**listing.to_json(), "schema": manifest["schema"]}
            )
            problem = judge(self.sandbox, source, request, host=host)
            if problem is not None:
                raise JobRefused(f"listing {listing.id}: {problem}")
        self.log(f"job {job.id}: every provider contract accepts")

    def _decrypt(self, job_id: int, listing: Listing, manifest: dict[str, Any]) -> Dataset:
        try:
            key = self.keys.data_key(self.market, job_id, listing, worker=self.address)
        except IntegrityError as exc:  # sealed for another listing, provider, chain or enclave
            raise JobRefused(str(exc)) from None
        uri = str((manifest.get("ciphertext") or {}).get("uri", ""))
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
        if dataset.schema != Schema.from_json(manifest["schema"]):
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

    def _train(
        self,
        job: Job,
        body: JobBody,
        summary: dict[str, Any],
        datasets: list[Dataset],
        validation: Dataset | None,
        beat: Heartbeat,
    ) -> Any:
        from sterling.enclave import training

        sigma, q, delta = (
            float(summary["noise_multiplier"]),
            float(summary["sample_rate"]),
            body.training.delta,
        )
        steps, runs = int(summary["steps"]), int(summary.get("training_runs", 1))

        def pld(n: int) -> float:
            # Progress only: the coarser PLD grid is still an upper bound and several times cheaper,
            # which matters when a heartbeat thread computes it beside training on two cores.
            if n <= 0:
                return 0.0
            params = accountant.DpSgdParams(sigma, q, n, delta)
            return accountant.pld_epsilon(params, accountant.SEARCH_DISCRETIZATION)

        def plan(planned: int) -> None:
            """ε so far when `step` of `planned` steps are done: one run, or a first run (or its
            pilot) of `planned - steps` steps and a second run that composes with it."""
            first = planned - steps
            if first <= 0:
                beat.plan(planned, lambda step: pld(min(step, steps)))
            else:
                beat.plan(planned, lambda step: pld(min(step, first)) + pld(max(0, step - first)))

        planned = steps + int(summary.get("pilot_steps") or steps) if runs == 2 else steps
        plan(planned)

        def progress(step: int, total: int) -> None:
            nonlocal planned
            # A pilot that drops no one goes on to its run's end: the plan shrinks to that one run.
            if total != planned:
                planned = total
                plan(total)
            beat.update(step)

        try:
            outcome = training.train(
                body,
                summary,
                datasets,
                listing_ids=[a.listing_id for a in job.allocations],
                validation=validation,
                keep=self._keep_hook(job, body),
                progress=progress,
                reserved_epsilon=min(a.reserved for a in job.allocations) / MICRO,
            )
        except SterlingError as exc:
            raise JobRefused(f"training failed: {exc}") from None
        done = int(outcome.info["steps_run"])
        beat.plan(done, lambda _: outcome.epsilon_spent)
        beat.finish(done)
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
        self, job: Job, body: JobBody, manifests: list[dict[str, Any]], outcome: Any
    ) -> dict[str, Any]:
        model_key = AESGCM.generate_key(bit_length=256)
        ref = self.store.put_bytes(container.encrypt_bytes(outcome.bundle.to_bytes(), model_key))
        binding = seal.model_key_binding(
            self.market.chain.chain_id, self.market.address, job_id=job.id, result_hash=ref.sha256
        )
        sealed_key = seal.seal(model_key, job.consumer_key, binding)
        spent = [
            min(a.reserved, math.ceil(eps * MICRO))
            for a, eps in zip(job.allocations, outcome.epsilon_per_listing, strict=True)
        ]
        fees = [int((m.get("terms") or {}).get("appraisal_fee_wei") or 0) for m in manifests]
        payouts = payout_plan(
            prices=[a.price for a in job.allocations],
            kept=outcome.kept,
            appraisal_fees=fees,
            values=list(outcome.appraisal.per_provider),
            bonus_pool=min(body.bonus_pool_wei, max(0, job.escrow - sum(a.price for a in job.allocations))),
        )
        weights = outcome.appraisal.weights()
        if self.state_dir is not None:
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
            )
        except ContractRevert as exc:
            raise LeaseLost(f"could not settle ({exc.reason})") from None
        return {
            "model_uri": ref.uri,
            "epsilon_spent": outcome.epsilon_spent,
            "steps": outcome.steps,
            "payouts_wei": payouts,
            "weights": weights,
            "appraisal": outcome.appraisal.method,
            "kept": outcome.kept,
        }


def payout_plan(
    *, prices: list[int], kept: list[bool], appraisal_fees: list[int], values: list[float], bonus_pool: int
) -> list[int]:
    """What each listing's provider is paid at settlement.

    A provider whose data the final model used is paid its price; one the consumer's contract
    dropped (and whose data was then left out) gets at most the appraisal fee its terms set. The
    bonus pool is split among the used providers in proportion to their positive appraised
    value (rounding down, so the total never exceeds the pool).
    """
    base = [p if k else min(f, p) for p, k, f in zip(prices, kept, appraisal_fees, strict=True)]
    positive = [max(0.0, v) if k else 0.0 for v, k in zip(values, kept, strict=True)]
    total = sum(positive)
    if bonus_pool <= 0 or total <= 0:
        return base
    return [b + int(bonus_pool * v / total) for b, v in zip(base, positive, strict=True)]
