"""The worker's steps from training to settlement: what earlier holders released, the training
itself with the consumer's `keep` hook, and the settlement (receipt, sealed model, payouts, the
pools' Merkle trees, `complete_job`).

`JobRun` is mixed into `Worker` (enclave/worker.py), which holds the market, the enclave's account,
storage and entropy these steps use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_account.signers.local import LocalAccount

from sterling.appraisal.payouts import payout_plan
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import Job
from sterling.chain.units import MICRO
from sterling.crypto import container, seal
from sterling.crypto.entropy import SecretRandom
from sterling.data.dataset import Dataset
from sterling.data.rows import RowSource
from sterling.enclave.heartbeat import Heartbeat, LeaseLost
from sterling.enclave.host import ChainHost
from sterling.enclave.outcomes import ChargedFailure, JobRefused, settlement_refused
from sterling.enclave.pools import PoolJob
from sterling.enclave.tee import TeeBackend
from sterling.errors import ContractError, ContractRevert, SterlingError
from sterling.privacy.job import Job as JobBody
from sterling.privacy.mechanisms import Mechanism
from sterling.privacy.plan import TrainingPlan
from sterling.privacy.receipt import Receipt, prior_name
from sterling.storage.blobs import BlobStore
from sterling.storage.manifest import Manifest

if TYPE_CHECKING:
    from sterling.enclave.sandbox import Sandbox


class JobRun:
    """The steps of `Worker._run` from training on, on the worker's own state."""

    market: Marketplace
    tee: TeeBackend
    account: LocalAccount
    store: BlobStore
    entropy: SecretRandom
    sandbox: Sandbox
    state_dir: Path | None

    def log(self, message: str) -> None:
        raise NotImplementedError

    def _holds(self, job_id: int) -> bool:
        raise NotImplementedError

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
        datasets: list[Dataset | RowSource],
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
        self,
        job: Job,
        body: JobBody,
        manifests: list[Manifest],
        plan: TrainingPlan,
        outcome: Any,
        *,
        pools: PoolJob | None = None,
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
        pools = pools or PoolJob({})
        trees = pools.commit(self.store, self.account, job, payouts)
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
        pools.finalize(self.account, job.id, self.log)
        return {
            "pools": pools.to_json(trees),
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
