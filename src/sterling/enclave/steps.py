"""The worker's steps before training: open the job body, read each listing's manifest and terms,
run the provider contracts, and fetch and decrypt the data (a pool's records, a row store for data
larger than memory, or one dataset in memory).

`JobSteps` is mixed into `Worker` (enclave/worker.py), which holds the market, the key manager, the
sandbox and the options these steps read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO32, Job, Listing
from sterling.chain.units import MICRO, from_delta, from_micro, to_delta
from sterling.crypto import container, seal
from sterling.data.dataset import Dataset
from sterling.data.rows import RowSource, download_rows
from sterling.enclave.host import ChainHost
from sterling.enclave.keymanager import KeyManager
from sterling.enclave.outcomes import JobRefused
from sterling.enclave.pools import PoolJob, open_records
from sterling.errors import IntegrityError, NotFound, SterlingError
from sterling.privacy.job import Job as JobBody
from sterling.privacy.plan import TrainingPlan
from sterling.privacy.verifier import ListingView, verify
from sterling.storage.blobs import blob_size, fetch_verified
from sterling.storage.manifest import Manifest

if TYPE_CHECKING:
    from sterling.enclave.sandbox import Sandbox
    from sterling.enclave.worker import WorkerOptions


class JobSteps:
    """The steps of `Worker._run` up to the data, on the worker's own state."""

    market: Marketplace
    keys: KeyManager
    sandbox: Sandbox
    options: WorkerOptions
    state_dir: Path | None

    def log(self, message: str) -> None:
        raise NotImplementedError

    @property
    def address(self) -> str:
        raise NotImplementedError

    # ---- pools (enclave/pools.py): one dataset of many contributors' records

    def _pool_data(self, job_id: int, listing: Listing, manifest: Manifest, pools: PoolJob) -> Dataset:
        dataset, pools.rows[listing.id] = open_records(
            self.keys,
            self.market,
            job_id,
            listing,
            pools.rows[listing.id],
            manifest,
            worker=self.address,
            log=self.log,
        )
        if dataset is None:
            raise JobRefused(
                f"listing {listing.id}: no record of the pool's admitted members opens as one row"
            )
        return dataset

    def _replan(
        self,
        job: Job,
        body: JobBody,
        listings: list[Listing],
        manifests: list[Manifest],
        pools: PoolJob,
        plan: TrainingPlan,
    ) -> tuple[list[Manifest], TrainingPlan]:
        """Verify again if unusable pool records were left out (the row count, hence the plan, moved)."""
        if not pools.dropped:
            return manifests, plan
        manifests = pools.manifests(listings, manifests)
        report = verify(body, self._views(job, listings, manifests))
        if not report.ok or report.plan is None:
            raise JobRefused(
                "verification failed once unusable pool records were left out: "
                + "; ".join(v.message for v in report.violations)
            )
        return manifests, report.plan

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

    def _decrypt(self, job_id: int, listing: Listing, manifest: Manifest) -> Dataset | RowSource:
        """The listing's verified, decrypted data: in memory, or above `options.stream_above` bytes a
        row store over a local copy of the ciphertext (rows decrypted as training reads them)."""
        try:
            key = self.keys.data_key(self.market, job_id, listing, worker=self.address)
        except IntegrityError as exc:  # sealed for another listing, provider, chain or enclave
            raise JobRefused(str(exc)) from None
        uri = manifest.ciphertext.uri if manifest.ciphertext is not None else ""
        source = f"listing {listing.id}"
        dataset: Dataset | RowSource
        try:
            size = blob_size(uri)
            if size is None or size > self.options.stream_above:
                work = self.state_dir / "work" if self.state_dir is not None else None
                dataset = download_rows(uri, listing.data_hash, key, work_dir=work, source=source)
                self.log(f"job {job_id}: listing {listing.id} streams by row ({size or '?'} bytes sealed)")
            else:
                plain = container.decrypt_bytes(fetch_verified(uri, listing.data_hash), key)
                dataset = Dataset.from_bytes(plain, source=source)
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
