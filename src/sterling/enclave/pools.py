"""The enclave's side of a pool: which records a job uses, opening them, and the payout tree.

A pool listing (published by the Pools contract, see docs/pools.md) is trained on as one dataset of
one row per admitted member. Which members are admitted is public: the rule (not left, and the
pool's spent + reserved since they joined within their cap) is evaluated on the chain's state at
the block in which this job was last claimed, so anyone can recompute it. Each record is fetched,
checked against its hash, its key unsealed (bound to the contributor), decrypted and checked to be
one row of the pool's schema; the rows are concatenated in member order.

At settlement the pool listing's payout is split equally among the members whose rows were used,
in exact integer wei; the tree of (index, account, amount) leaves is public, so it carries no
per-record value (which is a function of the record).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from eth_account.signers.local import LocalAccount

from sterling.appraisal.payouts import payout_plan
from sterling.chain.marketplace import Marketplace
from sterling.chain.merkle import Leaf, PayoutTree
from sterling.chain.pools import Member, Pools, pool_of
from sterling.chain.types import Job, Listing
from sterling.crypto import container
from sterling.data.dataset import Dataset, Schema
from sterling.enclave.keymanager import KeyManager
from sterling.errors import ContractRevert, EnclaveError, SterlingError
from sterling.storage.blobs import BlobStore, fetch_verified
from sterling.storage.manifest import Manifest


@dataclass(frozen=True)
class PoolRows:
    """A pool listing as one job uses it: its contract and the members admitted at the claim."""

    listing_id: int
    pools: Pools
    members: tuple[Member, ...]
    #: Admitted members whose record did not open or was not one row of the schema (left out).
    dropped: tuple[int, ...] = ()

    def manifest(self, manifest: Manifest) -> Manifest:
        """The pool's manifest with its row count the number of records the job uses (public)."""
        return replace(manifest, schema=replace(manifest.schema, rows=max(1, len(self.members))))


def claim_block(market: Marketplace, job: Job) -> int:
    """The block of the job's latest claim: the state at which the members are chosen."""
    claims = [ev.block for ev in market.job_events(job.id) if ev.name == "JobClaimed"]
    if not claims:
        raise EnclaveError(f"job {job.id} has no claim on chain")
    return claims[-1]


def pool_rows(market: Marketplace, job: Job, listings: Sequence[Listing]) -> dict[int, PoolRows]:
    """The job's pool listings, each with the members a job claimed at its claim block uses."""
    out: dict[int, PoolRows] = {}
    block: int | None = None
    for listing in listings:
        pools = pool_of(market, listing)
        if pools is None:
            continue
        block = claim_block(market, job) if block is None else block
        members = pools.admitted(market, listing.id, block=block)
        out[listing.id] = PoolRows(listing.id, pools, tuple(members))
    return out


def open_records(
    keys: KeyManager,
    market: Marketplace,
    job_id: int,
    listing: Listing,
    rows: PoolRows,
    manifest: Manifest,
    *,
    worker: str,
    log: Callable[[str], None],
) -> tuple[Dataset | None, PoolRows]:
    """The pool's rows as one Dataset (None if no record is usable), and the members actually used."""
    records = [(m.account, m.data_hash, m.sealed_key) for m in rows.members]
    record_keys = keys.record_keys(market, job_id, listing, records, worker=worker)
    one_row = replace(manifest.schema, rows=1)
    features, labels, used, dropped = [], [], [], []
    for member, key in zip(rows.members, record_keys, strict=True):
        record = _open(member, key, one_row)
        if record is None:
            dropped.append(member.index)
            continue
        features.append(record.features)
        labels.append(record.labels)
        used.append(member)
    if dropped:
        log(f"job {job_id}: pool {listing.id}: left out {len(dropped)} records that do not open as one row")
    final = replace(rows, members=tuple(used), dropped=tuple(dropped))
    if not used:
        return None, final
    schema = replace(manifest.schema, rows=len(used))
    return Dataset(np.concatenate(features), np.concatenate(labels), schema), final


def _open(member: Member, key: bytes | None, schema: Schema) -> Dataset | None:
    if key is None:
        return None
    try:
        plain = container.decrypt_bytes(fetch_verified(member.uri, member.data_hash), key)
        record = Dataset.from_bytes(plain, source=f"pool record {member.index}")
    except (SterlingError, OSError, ValueError):
        return None
    return record if record.schema == schema else None


def payout_tree(job_id: int, rows: PoolRows, payout: int) -> PayoutTree | None:
    """Equal integer shares of `payout` for the members used, leaf index = member index (the
    remainder, under one wei per member, goes back to the consumer when the payout is finalized)."""
    n = len(rows.members)
    if n == 0 or payout <= 0:
        return None
    shares = payout_plan(
        prices=[0] * n, kept=[True] * n, appraisal_fees=[0] * n, values=[1.0] * n, bonus_pool=payout
    )
    leaves = [
        Leaf(job_id, rows.listing_id, m.index, m.account, share)
        for m, share in zip(rows.members, shares, strict=True)
    ]
    return PayoutTree.of_leaves(job_id=job_id, listing_id=rows.listing_id, leaves=leaves)


def commit(store: BlobStore, pools: Pools, enclave: LocalAccount, job_id: int, tree: PayoutTree) -> str:
    """Store the public tree and commit its root on chain (before the job is completed)."""
    ref = store.put_bytes(tree.to_bytes())
    pools.commit_payouts(enclave, job_id, tree.listing_id, root=tree.root, total=tree.total, tree_uri=ref.uri)
    return ref.uri


@dataclass
class PoolJob:
    """The pool listings of one job: their admitted members, and their payouts at settlement."""

    rows: dict[int, PoolRows]

    @classmethod
    def of(cls, market: Marketplace, job: Job, listings: Sequence[Listing]) -> PoolJob:
        return cls(pool_rows(market, job, listings))

    def manifests(self, listings: Sequence[Listing], manifests: Sequence[Manifest]) -> list[Manifest]:
        """Each pool's manifest with its row count the records this job uses; others as they are."""
        return [
            self.rows[listing.id].manifest(m) if listing.id in self.rows else m
            for listing, m in zip(listings, manifests, strict=True)
        ]

    @property
    def dropped(self) -> bool:
        return any(rows.dropped for rows in self.rows.values())

    def commit(
        self, store: BlobStore, enclave: LocalAccount, job: Job, payouts: Sequence[int]
    ) -> dict[int, str]:
        """Commit each pool listing's payout tree (public, equal shares) before the job settles."""
        uris = {}
        for a, payout in zip(job.allocations, payouts, strict=True):
            rows = self.rows.get(a.listing_id)
            tree = None if rows is None else payout_tree(job.id, rows, payout)
            if rows is not None and tree is not None:
                uris[a.listing_id] = commit(store, rows.pools, enclave, job.id, tree)
        return uris

    def finalize(self, enclave: LocalAccount, job_id: int, log: Callable[[str], None]) -> None:
        """Make the pool payouts claimable now (anyone may, and a claim does it lazily)."""
        for lid, rows in self.rows.items():
            try:
                rows.pools.finalize(enclave, job_id, lid)
            except ContractRevert as exc:
                log(f"job {job_id}: pool {lid} not finalized ({exc.reason}); a claim will do it")

    def to_json(self, trees: dict[int, str]) -> dict[int, dict[str, Any]]:
        return {
            lid: {"members": len(r.members), "dropped": list(r.dropped), "tree_uri": trees.get(lid)}
            for lid, r in self.rows.items()
        }
