"""The retinopathy demo: a market of fundus-photograph providers, a researcher's jobs, settlement.

`run(options)` plays the whole story on a local chain (anvil, or the embedded
EVM) with a SIMULATED enclave worker in a background thread, using only
Sterling's public pieces — the provider's `seal_dataset`/`publish`, the
consumer's `submit_job`/`watch`/`fetch_result`, the worker — exactly as the
CLI uses them:

1. providers publish sealed partitions of the data, each on its own terms;
2. a hospital researcher (holding St Mary's credential) browses, uploads
   their own validation set, and submits a DP CNN job to every listing whose
   terms allow it, then a DP logistic regression to all of them;
3. the enclave verifies, trains, appraises (flagging the noise seller, whom
   the researcher's contract drops), and settles; the researcher opens each
   model and tests it on their own test set beside a non-private twin;
4. a further job that would overspend a budget is refused, with the reason.

A second run in the same state folder continues the same market.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sterling.chain import node
from sterling.chain.deploy import ensure_deployment
from sterling.chain.marketplace import CredentialPolicy, Marketplace
from sterling.chain.node import Chain
from sterling.chain.units import from_micro, to_delta
from sterling.crypto.keys import derived_x25519
from sterling.data.dataset import Dataset, Schema
from sterling.demo import market as cast
from sterling.demo.data import Split, load_data
from sterling.demo.jobs import DELTA, JobRecord, job_body, job_json
from sterling.demo.twin import Evaluation, evaluate, train_twin
from sterling.enclave.contracts import example
from sterling.enclave.tee import SimulatedTee
from sterling.enclave.worker import Worker, WorkerOptions
from sterling.errors import ContractRevert, EnclaveError, UsageError
from sterling.files import atomic_write
from sterling.privacy.graph import template
from sterling.privacy.job import Job
from sterling.privacy.verifier import verify
from sterling.sdk import consumer as buyer
from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset
from sterling.sdk.trust import Trust
from sterling.storage.blobs import BlobStore

RECORD = "demo.json"


@dataclass(frozen=True)
class DemoOptions:
    state: Path
    data: Path | None = None  # RetinaMNIST .npz; synthetic fundus images without it
    providers: int = 5  # honest providers (the noise seller comes on top)
    seed: int = 0
    images: int = 4000  # synthetic images shared among the providers (the researcher holds 10% + 20% more)
    embedded: bool = False
    cnn_epsilon: float = 3.0  # per training run
    logreg_epsilon: float = 1.0
    anvil: Path | None = None

    def __post_init__(self) -> None:
        if not 4 <= self.providers <= 20:
            raise UsageError(
                f"--providers must be between 4 and 20 (plus the noise seller), got {self.providers}"
            )
        if not 500 <= self.images <= 100_000:
            raise UsageError(f"--images must be between 500 and 100000, got {self.images}")


@dataclass(frozen=True)
class Buying:
    """The researcher's side of the demo: their chain account, keys, store and own data."""

    market: Marketplace
    store: BlobStore
    researcher: Any
    key: Any
    validation_uri: str
    data: Split


@dataclass
class Reporter:
    """How the scenario tells its caller what is happening (the CLI draws it)."""

    say: Callable[[str], None] = lambda _: None
    progress: Callable[[str, buyer.Progress], None] = lambda _label, _p: None
    #: The enclave worker's own log lines (it runs in this process, in a thread).
    worker_log: Callable[[str], None] = lambda _: None


class Demo:
    def __init__(self, options: DemoOptions, reporter: Reporter | None = None) -> None:
        self.o = options
        self.r = reporter or Reporter()
        self.started = time.perf_counter()
        #: The enclaves the demo's clients seal to; nothing until `run` confirms its own.
        self.trust = Trust()

    # ------------------------------------------------------------------ setup

    def _chain(self) -> Chain:
        if self.o.embedded:
            return node.embedded()
        if self.o.anvil is None:
            raise UsageError("anvil is needed for the demo (or pass --embedded)")
        return node.start_anvil(self.o.anvil, state_dir=self.o.state / "chain")

    def _record(self) -> dict[str, Any] | None:
        path = self.o.state / RECORD
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def run(self) -> dict[str, Any]:
        self.o.state.mkdir(parents=True, exist_ok=True)
        self.r.say(
            "starting a local chain" + (" (embedded EVM)" if self.o.embedded else " (anvil on 127.0.0.1)")
        )
        chain = self._chain()
        stop = threading.Event()
        thread: threading.Thread | None = None
        try:
            accounts = chain.dev_accounts
            admin, hospital, researcher = accounts[0], accounts[1], accounts[2]
            deployment, reused = ensure_deployment(
                chain, self.o.state / "chain", deployer=admin, lease_seconds=300
            )
            market = Marketplace.at(chain, deployment.marketplace)
            store = BlobStore(self.o.state / "blobs")
            self.r.say("starting a SIMULATED enclave worker (no TEE hardware: this attests nothing)")
            tee = SimulatedTee(self.o.state / "chain")
            try:
                worker = Worker.open(
                    market,
                    tee,
                    self.o.state / "chain" / "enclave",
                    store,
                    options=WorkerOptions(name="demo-worker", progress_seconds=2.0, poll_seconds=0.2),
                    log=self.r.worker_log,
                )
            except EnclaveError as exc:
                raise UsageError(
                    f"the enclave's sealed keys in {self.o.state} do not open ({exc}): Sterling's code "
                    "changed since this market was made, and sealing is bound to the code, as on real "
                    "hardware; start a fresh market with --fresh"
                ) from None
            worker.register(admin=admin)
            # Providers and the researcher seal only to an enclave they have confirmed; here that is
            # the demo's own SIMULATED one, trusted by its measurement and its (local) attestation key.
            self.trust = Trust.of(
                tee.measurement(), tee.platform_key.address, simulated=True, note="the demo's own"
            )
            self.r.say(
                f"providers and researcher trust the SIMULATED enclave: measurement "
                f"0x{tee.measurement().hex()[:16]}…, attested by the local key {tee.platform_key.address}"
            )
            thread = threading.Thread(target=worker.run, args=(stop,), name="enclave-worker", daemon=True)
            thread.start()

            data = load_data(self.o.data, images=self.o.images, seed=self.o.seed)
            specs = cast.providers(self.o.providers)
            record = self._record()
            continued = bool(reused and record and record.get("marketplace") == market.address)
            if continued and record is not None:
                self._check_same(record, data)
                listing_ids = [int(record["listings"][s.name]) for s in specs]
                policy = str(record["credential_policy"])
                self.r.say(f"continuing the market in {self.o.state} ({len(listing_ids)} listings)")
            else:
                listing_ids, policy = self._publish(chain, market, store, data, specs, hospital)
                atomic_write(
                    self.o.state / RECORD,
                    json.dumps(
                        {
                            "marketplace": market.address,
                            "listings": {s.name: lid for s, lid in zip(specs, listing_ids, strict=True)},
                            "credential_policy": policy,
                            "data": data.source,
                            "seed": self.o.seed,
                            "providers": self.o.providers,
                        },
                        indent=1,
                    ).encode(),
                )
            credential = CredentialPolicy(chain, policy)
            if not credential.holds(researcher.address):
                credential.grant(hospital, researcher.address, expires=int(time.time()) + 365 * 86400)
            self.r.say("St Mary's Hospital grants the researcher its credential: its data is free for them")
            key = derived_x25519(researcher)
            validation_uri = buyer.upload_validation_set(store, data.validation)

            self.r.say("the researcher browses the market")
            views = buyer.listing_views(market, listing_ids, consumer=researcher.address)
            buying = Buying(market, store, researcher, key, validation_uri, data)
            jobs = [
                self._job(buying, "DP CNN", "cnn", listing_ids, self.o.cnn_epsilon),
                self._job(
                    buying,
                    "DP logistic regression",
                    "logistic_regression",
                    listing_ids,
                    self.o.logreg_epsilon,
                ),
            ]
            refused, refused_chain = self._overspend(buying, listing_ids)
            providers = self._providers(market, specs, listing_ids, jobs, views)
            summary = {
                "enclave_mode": "simulation",
                "chain": {
                    "kind": chain.kind,
                    "rpc_url": chain.rpc_url,
                    "chain_id": chain.chain_id,
                    "marketplace": market.address,
                    "enclave": worker.address,
                },
                "continued": continued,
                "data": {
                    "source": data.source,
                    "pool_rows": data.pool.schema.rows,
                    "validation_rows": data.validation.schema.rows,
                    "test_rows": data.test.schema.rows,
                    "classes": list(data.pool.schema.classes),
                    "image_shape": list(data.pool.schema.shape),
                },
                "providers": providers,
                "jobs": [job_json(j) for j in jobs],
                "refused_job_reason": refused,
                "refused_on_chain_reason": refused_chain,
            }
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=30)
            chain.close()
        summary["seconds"] = round(time.perf_counter() - self.started, 2)
        return summary

    def _check_same(self, record: dict[str, Any], data: Split) -> None:
        same = (record.get("data"), record.get("seed"), record.get("providers")) == (
            data.source,
            self.o.seed,
            self.o.providers,
        )
        if not same:
            raise UsageError(
                f"the market in {self.o.state} was made with data {record.get('data')}, seed "
                f"{record.get('seed')} and {record.get('providers')} providers: use the same options to "
                "continue it, or --fresh to start over"
            )

    # ------------------------------------------------------------ providers

    def _publish(
        self,
        chain: Chain,
        market: Marketplace,
        store: BlobStore,
        data: Split,
        specs: list[cast.ProviderSpec],
        hospital: Any,
    ) -> tuple[list[int], str]:
        parts = cast.partition(data.pool, specs, seed=self.o.seed)
        accounts = chain.dev_accounts[3 : 3 + len(specs)]
        if len(accounts) < len(specs):
            raise UsageError(
                f"the local chain has {len(chain.dev_accounts)} accounts; too few for {len(specs)} providers"
            )
        enclave = choose_enclave(market, trust=self.trust)
        policy = ""
        ids = []
        for spec, part, account in zip(specs, parts, accounts, strict=True):
            self.r.say(f"{spec.name} encrypts {part.schema.rows} photographs, seals their key, lists them")
            terms_policy = None
            if spec.kind == "credential":
                policy = CredentialPolicy.deploy(
                    chain, account, marketplace=market.address, issuer=hospital.address
                ).address
                terms_policy = policy
            contract = example("logreg_only") if spec.kind == "logreg_only" else None
            sealed = seal_dataset(
                part,
                store,
                name=spec.name,
                description=f"{part.schema.rows} graded fundus photographs ({spec.kind})",
                contract_source=contract,
                appraisal_fee_wei=spec.appraisal_fee_gwei * cast.GWEI,
            )
            terms = ListingTerms(
                spec.price_per_job_gwei * cast.GWEI,
                spec.price_per_epsilon_gwei * cast.GWEI,
                spec.budget,
                spec.cap,
                DELTA,
                policy=terms_policy,
            )
            ids.append(publish(market, account, sealed, terms, enclave=enclave).listing_id)
        if not policy:
            raise UsageError("the demo's cast has no credential provider")
        return ids, policy

    # ----------------------------------------------------------------- jobs

    def _job(self, b: Buying, label: str, family: str, ids: list[int], epsilon_per_run: float) -> JobRecord:
        started = time.perf_counter()
        rec = JobRecord(label, family, epsilon_per_run=epsilon_per_run)
        market, researcher, key, data = b.market, b.researcher, b.key, b.data
        # Assemble the dataset: listings still on sale with enough ε left for this job...
        views = buyer.listing_views(market, ids, consumer=researcher.address)
        job = job_body(family, ids, epsilon_per_run, b.validation_uri, data.pool.schema, seed=self.o.seed)
        needed = job.listings[0].epsilon
        for lid in ids:
            if not views[lid].open or views[lid].remaining_epsilon < needed:
                rec.excluded[str(lid)] = (
                    f"only ε {views[lid].remaining_epsilon:g} left, the job needs {needed:g}"
                )
        # ...whose providers' contracts accept it (run here first, as the enclave will).
        chosen = [lid for lid in ids if str(lid) not in rec.excluded]
        job = job_body(
            family, chosen or ids, epsilon_per_run, b.validation_uri, data.pool.schema, seed=self.o.seed
        )
        report = verify(job, views)
        if report.ok and report.plan is not None:
            refusals = buyer.precheck_contracts(market, job, consumer=researcher.address, plan=report.plan)
            rec.excluded.update({str(lid): why for lid, why in refusals.items()})
            chosen = [lid for lid in chosen if lid not in refusals]
            job = job_body(
                family, chosen or ids, epsilon_per_run, b.validation_uri, data.pool.schema, seed=self.o.seed
            )
        for left_out, why in rec.excluded.items():
            self.r.say(f"{label}: listing {left_out} is left out: {why}")
        rec.listings = [a.listing_id for a in job.listings]
        rec.epsilon_reserved = job.listings[0].epsilon
        self.r.say(f"{label}: verified against {len(rec.listings)} listings' terms; submitting")
        try:
            submitted = buyer.submit_job(market, researcher, key, job, b.store, trust=self.trust)
        except (UsageError, ContractRevert) as exc:
            rec.state, rec.reason = "refused", str(exc)
            self.r.say(f"{label}: refused: {exc}")
            return rec
        rec.id, rec.escrow_wei = submitted.job_id, submitted.escrow_wei

        def seen(p: buyer.Progress) -> None:
            rec.progress.append((p.step, p.epsilon))
            self.r.progress(label, p)

        final = buyer.watch(market, submitted.job_id, on_update=seen, poll_seconds=0.3, timeout=900)
        rec.state, rec.reason = final.state, final.reason
        if final.state != "completed":
            return rec
        chain_job = market.job(submitted.job_id)
        rec.paid_wei = sum(a.payout for a in chain_job.allocations)
        rec.epsilon_charged = {str(a.listing_id): from_micro(a.spent) for a in chain_job.allocations}
        bundle = buyer.fetch_result(market, submitted.job_id, key)
        # What any provider can do: check the charge against the privacy receipt, trusting no one.
        from sterling.sdk.receipts import check_receipt

        checked = check_receipt(market, submitted.job_id)
        rec.receipt = {
            "ok": checked.ok,
            "sha256": checked.to_json()["receipt_sha256"],
            "problems": checked.problems,
        }
        verdict = "checks out" if checked.ok else "MISMATCH: " + "; ".join(checked.problems)
        self.r.say(
            f"{label}: privacy receipt {verdict} (ε recomputed from what ran, against the chain's charge)"
        )
        rec.steps = int(bundle.info.get("steps", 0))
        rec.appraisal = dict(bundle.info.get("appraisal") or {})
        per_epoch = max(1.0, 1 / float(bundle.info.get("sample_rate") or 1.0))
        rec.dp_curve = [
            {"epoch": round(c["step"] / per_epoch, 2), "validation_accuracy": c["accuracy"]}
            for c in (bundle.info.get("checkpoint") or {}).get("curve", [])
        ]
        rec.dp = asdict(evaluate(bundle, data.test))
        self.r.say(f"{label}: model received; training its non-private twin on the same data for comparison")
        twin: Evaluation
        twin, rec.twin_curve = train_twin(
            job, self._pooled(market, data, rec), data.test, seed=self.o.seed, validation=data.validation
        )
        rec.nonprivate = asdict(twin)
        rec.seconds = round(time.perf_counter() - started, 2)
        return rec

    def _pooled(self, market: Marketplace, data: Split, rec: JobRecord) -> Dataset:
        """The plaintext the final model was trained on, rebuilt by the demo harness (never by a consumer)."""
        specs = cast.providers(self.o.providers)
        parts = cast.partition(data.pool, specs, seed=self.o.seed)
        record = self._record() or {}
        by_id = {int(v): k for k, v in (record.get("listings") or {}).items()}
        names = [s.name for s in specs]
        kept = set(rec.appraisal.get("kept") or rec.listings)
        chosen = [parts[names.index(by_id[lid])] for lid in rec.listings if lid in kept and lid in by_id]
        features = np.concatenate([d.features for d in chosen])
        labels = np.concatenate([d.labels for d in chosen])
        s = data.pool.schema
        return Dataset(
            features, labels, Schema(s.modality, s.shape, s.dtype, s.classes, len(labels), s.feature_names)
        )

    def _overspend(self, b: Buying, ids: list[int]) -> tuple[str, str]:
        """A job asking more ε than a listing has left: refused by the verifier, and by the chain."""
        market, researcher, validation_uri = b.market, b.researcher, b.validation_uri
        listings = {lid: market.listing(lid) for lid in ids}
        poorest = min(ids, key=lambda lid: listings[lid].budget.remaining)
        cap = from_micro(listings[poorest].terms.max_epsilon_per_job)
        # More than is left, yet within the per-job cap, so the budget is what refuses it.
        ask = round(min(cap, from_micro(listings[poorest].budget.remaining) + 1.0), 4)
        left = {lid: listings[lid].budget.remaining for lid in ids}
        self.r.say(
            f"a further job asks ε {ask} of listing {poorest}, which has {from_micro(left[poorest]):g} left"
        )
        job = Job.parse(
            {
                "listings": [{"listing_id": poorest, "epsilon": ask}],
                "model": template("logistic_regression", classes=5).model_dump(mode="json"),
                "training": {
                    # A fixed σ, well within the ask: calibrating σ to a target ε took the verifier
                    # 3.5 s, for a job refused on its budget anyway.
                    "epochs": 2,
                    "expected_batch_size": 64,
                    "noise_multiplier": 5.0,
                    "delta": DELTA,
                },
                "evaluation": {
                    "holdout_fraction": 0.0,
                    "validation_uri": validation_uri,
                    "metrics": ["accuracy"],
                },
                "payment_cap_wei": 10**19,
            }
        )
        report = verify(job, buyer.listing_views(market, [poorest], consumer=researcher.address))
        client = "; ".join(v.message for v in report.violations if v.term == "budget") or "accepted"
        try:
            market.submit_job(
                researcher,
                listing_ids=[poorest],
                epsilons=[round(ask * 10**6)],
                delta=to_delta(DELTA),
                consumer_key=bytes(31) + b"\x01",
                job_hash=bytes(31) + b"\x02",
                job_uri="demo://overspend",
                value=10**18,
            )
            chain_reason = "accepted"
        except ContractRevert as exc:
            chain_reason = exc.reason
        self.r.say(f"refused: {client} (the chain: {chain_reason})")
        return client, chain_reason

    def _providers(
        self,
        market: Marketplace,
        specs: list[cast.ProviderSpec],
        ids: list[int],
        jobs: list[JobRecord],
        views: dict[int, Any],
    ) -> list[dict[str, Any]]:
        appraised = next((j.appraisal for j in jobs if j.appraisal.get("values")), {})
        values = appraised.get("values") or {}
        flagged = set(appraised.get("flagged") or [])
        out = []
        for spec, lid in zip(specs, ids, strict=True):
            listing = market.listing(lid)
            paid = 0
            for j in jobs:
                if j.id is not None and lid in j.listings:
                    paid += next(a.payout for a in market.job(j.id).allocations if a.listing_id == lid)
            out.append(
                {
                    "id": lid,
                    "name": spec.name,
                    "kind": spec.kind,
                    "rows": views[lid].schema.rows if lid in views else None,
                    "terms": {
                        **listing.terms.to_json(),
                        "appraisal_fee_wei": spec.appraisal_fee_gwei * cast.GWEI,
                    },
                    "epsilon_budget": from_micro(listing.budget.total),
                    "epsilon_spent": from_micro(listing.budget.spent),
                    "epsilon_left": from_micro(listing.budget.remaining),
                    "value": values.get(str(lid)),
                    "flagged": lid in flagged,
                    "paid_wei": paid,
                }
            )
        return out


def fresh(state: Path) -> None:
    """Forget a previous demo market in `state` (refuses folders that do not look like one)."""
    if not state.exists():
        return
    if not ((state / RECORD).exists() or (state / "chain").exists()):
        raise UsageError(f"{state} does not look like a demo state folder; refusing to delete it")
    shutil.rmtree(state)
