"""The enclave worker: claim a job, prove it may run, train, and settle it on chain.

For each job it holds, in this order and stopping at the first refusal
(which fails the job on chain: full refund, reservation released):

1. fetch the sealed job body and check it against the hash on chain;
2. open it with the key manager (it is bound to this chain, Marketplace and
   consumer) and check it asks exactly what the chain reserved;
3. re-run the verifier against the listings as the chain shows them;
4. run every provider's contract (`check`) in the sandbox;
5. only then approve the job, so the key manager releases its data keys;
6. fetch, verify and decrypt each listing's data (in memory, or by row from a local copy when it
   is larger than memory; a pool's records one by one), and execute the
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
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState
from sterling.config import DEFAULT_STREAM_ABOVE
from sterling.crypto.entropy import SecretRandom
from sterling.data.dataset import Dataset
from sterling.data.rows import RowSource, SealedRows
from sterling.enclave.heartbeat import Heartbeat, LeaseLost
from sterling.enclave.keymanager import KeyManager, worker_account
from sterling.enclave.outcomes import (
    FAILED_AFTER_TRAINING,
    ChargedFailure,
    Handled,
    JobRefused,
    settlement_refused,
)
from sterling.enclave.pools import PoolJob
from sterling.enclave.settling import JobRun
from sterling.enclave.steps import JobSteps
from sterling.enclave.tee import SIMULATION_WARNING, TeeBackend
from sterling.errors import ChainError, ContractRevert, EnclaveError
from sterling.privacy.receipt import Receipt
from sterling.privacy.verifier import verify
from sterling.storage.blobs import BlobStore

__all__ = [
    "FAILED_AFTER_TRAINING",
    "ChargedFailure",
    "Handled",
    "JobRefused",
    "Worker",
    "WorkerOptions",
    "settlement_refused",
]

ETHER = 10**18
#: A local chain funds a new worker's gas from its first development account.
DEV_FUNDING = 10 * ETHER


@dataclass(frozen=True)
class WorkerOptions:
    name: str = "worker"
    poll_seconds: float = 0.5
    #: Seconds between on-chain heartbeats (progress and lease renewal); at most a third of the lease.
    progress_seconds: float = 5.0
    #: Ciphertexts above this many bytes are streamed by row from a local copy (`_decrypt`).
    stream_above: int = DEFAULT_STREAM_ABOVE


def _nothing(_: str) -> None:
    return None


class Worker(JobSteps, JobRun):
    """One enclave worker on one Marketplace (its steps: enclave/steps.py, then enclave/settling.py)."""

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
        pools = PoolJob.of(market, job, listings)  # pool listings: the members admitted at the claim
        manifests = pools.manifests(listings, manifests)
        report = verify(body, self._views(job, listings, manifests))
        if not report.ok or report.plan is None:
            raise JobRefused("verification failed: " + "; ".join(v.message for v in report.violations))
        plan = report.plan
        self.log(
            f"job {job_id}: verified ({body.model.family}, up to ε {report.summary['epsilon_total']:.3f})"
        )
        self._check_contracts(job, body, listings, manifests, plan)
        self.keys.approve(market, job_id)
        with ExitStack() as opened:  # row stores' local ciphertext copies go when the job does
            datasets: list[Dataset | RowSource] = []
            for listing, manifest in zip(listings, manifests, strict=True):
                if listing.id in pools.rows:
                    datasets.append(self._pool_data(job_id, listing, manifest, pools))
                    continue
                data = self._decrypt(job_id, listing, manifest)
                if isinstance(data, SealedRows):
                    opened.callback(data.close)
                datasets.append(data)
            manifests, plan = self._replan(job, body, listings, manifests, pools, plan)
            validation = self._validation(body)
            prior = self.prior_releases(job, plan, resumed=resumed)
            outcome = self._train(job, body, plan, datasets, validation, beat, prior)
        beat.check()
        return self._settle(job, body, manifests, plan, outcome, pools=pools)
