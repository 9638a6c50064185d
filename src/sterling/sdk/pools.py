"""Pools from the client's side: open a pool, join it with one record, leave, claim, withdraw.

A pool is a listing of many contributors (see docs/pools.md). Its manifest is public like any
listing's (schema, classes, name, description) and has no ciphertext: each contributor's record is
a canonical one-row Dataset of the pool's schema, encrypted under its own fresh key, stored
content-addressed, its key sealed (HPKE) to a trusted enclave and bound to this chain, this
Marketplace, the record's ciphertext and the contributor, as a provider's data key is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.chain.merkle import PayoutTree
from sterling.chain.pools import Member, PoolPayout, Pools, pool_of
from sterling.chain.types import Enclave, Listing
from sterling.chain.units import from_micro, to_micro
from sterling.crypto import container, seal
from sterling.data.dataset import Dataset, Schema
from sterling.errors import IntegrityError, NotFound, UsageError
from sterling.sdk.provider import ListingTerms
from sterling.storage.blobs import BlobStore, fetch_verified
from sterling.storage.manifest import MANIFEST_FORMAT, load_manifest

POOL_FORMAT = "sterling.pool/1"


@dataclass(frozen=True)
class CreatedPool:
    listing_id: int
    data_uri: str
    data_hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "listing_id": self.listing_id,
            "data_uri": self.data_uri,
            "data_hash": "0x" + self.data_hash.hex(),
        }


def create_pool(
    pools: Pools,
    curator: LocalAccount,
    store: BlobStore,
    *,
    schema: Schema,
    terms: ListingTerms,
    name: str = "",
    description: str = "",
) -> CreatedPool:
    """Store the pool's public manifest and publish its listing through the Pools contract.

    The manifest's row count is 1 (a placeholder): how many rows a job uses is the number of
    members admitted when it is claimed, which clients read from the chain.
    """
    chain_terms, budget, delta = terms.to_chain()
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "description": description,
        "schema": replace(schema, rows=1).to_json(),
        "ciphertext": None,
        "contract": None,
        "terms": {"allowed_model_families": None, "appraisal_fee_wei": 0},
        # A fresh nonce: two pools of the same schema and name are two budgets.
        "pool": {"format": POOL_FORMAT, "nonce": os.urandom(16).hex()},
    }
    ref = store.put_bytes(json.dumps(manifest, sort_keys=True, indent=1).encode())
    listing_id = pools.create_pool(
        curator, data_uri=ref.uri, data_hash=ref.sha256, terms=chain_terms, epsilon_budget=budget, delta=delta
    )
    return CreatedPool(listing_id, ref.uri, ref.sha256)


@dataclass(frozen=True)
class JoinedPool:
    listing_id: int
    index: int
    uri: str
    data_hash: bytes
    cap: float

    def to_json(self) -> dict[str, Any]:
        return {
            "listing_id": self.listing_id,
            "index": self.index,
            "uri": self.uri,
            "data_hash": "0x" + self.data_hash.hex(),
            "cap_epsilon": self.cap,
        }


def join_pool(
    market: Marketplace,
    pools: Pools,
    contributor: LocalAccount,
    store: BlobStore,
    listing_id: int,
    record: Dataset,
    *,
    cap: float,
    enclave: Enclave,
) -> JoinedPool:
    """Encrypt `record` (one row of the pool's schema), seal its key to `enclave`, and join."""
    pool = pools.pool(listing_id)
    if not pool.open:
        raise UsageError(f"pool {listing_id} is closed")
    if pools.member_index(listing_id, contributor.address) is not None:
        raise UsageError(f"{contributor.address} is already a member of pool {listing_id}")
    schema = load_manifest(market.listing(listing_id).data_uri).schema
    if record.schema.rows != 1:
        raise UsageError(f"a pool record is one row; this dataset has {record.schema.rows}")
    mine, theirs = record.schema, schema
    if (mine.modality, mine.shape, mine.dtype, mine.classes) != (
        theirs.modality,
        theirs.shape,
        theirs.dtype,
        theirs.classes,
    ):
        raise UsageError(f"the record's schema {mine.to_json()} is not the pool's {theirs.to_json()}")
    # Stored under the pool's own schema (its feature names too), which the enclave checks.
    record = Dataset(record.features, record.labels, replace(theirs, rows=1))
    micro = to_micro(cap, "cap")
    if not 0 < micro <= pool.total:
        raise UsageError(
            f"the cap must be > 0 and at most the pool's budget (ε {from_micro(pool.total)}), got {cap}"
        )
    key = AESGCM.generate_key(bit_length=256)
    ref = store.put_bytes(container.encrypt_bytes(record.to_bytes(), key))
    binding = seal.data_key_binding(
        market.chain.chain_id, market.address, ref.sha256, provider=contributor.address
    )
    sealed = seal.seal(key, enclave.hpke_public_key, binding)
    index = pools.join(
        contributor, listing_id, uri=ref.uri, data_hash=ref.sha256, sealed_key=sealed, cap=micro
    )
    return JoinedPool(listing_id, index, ref.uri, ref.sha256, cap)


@dataclass(frozen=True)
class PoolStatus:
    listing_id: int
    curator: str
    open: bool
    members: int
    admitted: int
    epsilon_spent: float
    epsilon_budget: float
    member: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pool_status(
    market: Marketplace, pools: Pools, listing_id: int, *, account: str | None = None
) -> PoolStatus:
    """The pool now: members, how many a job claimed now would use, and `account`'s membership."""
    pool = pools.pool(listing_id)
    budget = market.budget(pool.data_hash)
    members = pools.members(listing_id)
    mine: dict[str, Any] | None = None
    if account is not None:
        found = next((m for m in members if m.account.lower() == account.lower()), None)
        if found is not None:
            mine = {
                **found.to_json(),
                "spent_at_most_epsilon": from_micro(found.spent(budget)),
                "admitted_now": found.admitted(budget),
            }
    return PoolStatus(
        listing_id,
        pool.curator,
        pool.open,
        len(members),
        sum(m.admitted(budget) for m in members),
        from_micro(budget.spent),
        from_micro(budget.total),
        mine,
    )


def admitted_rows(market: Marketplace, pools: Pools, listing_id: int) -> int:
    """How many records a job claimed now would use (the pool's public row count)."""
    return len(pools.admitted(market, listing_id))


@dataclass(frozen=True)
class Claimed:
    job_id: int
    listing_id: int
    index: int
    amount: int
    already: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "amount": str(self.amount)}


def payout_tree(pools: Pools, job_id: int, listing_id: int) -> PayoutTree:
    """The committed public tree of a pool payout, fetched and checked against the root on chain."""
    uri = pools.tree_uri(job_id, listing_id)
    if uri is None:
        raise NotFound(f"no payouts were committed for job {job_id} on pool {listing_id}")
    digest = bytes.fromhex(uri.rstrip("/").rsplit("/", 1)[-1])
    tree = PayoutTree.from_bytes(fetch_verified(uri, digest))
    if tree.root != pools.payout(job_id, listing_id).root or (tree.job_id, tree.listing_id) != (
        job_id,
        listing_id,
    ):
        raise IntegrityError(
            f"the tree at {uri} is not the one committed for job {job_id} on pool {listing_id}"
        )
    return tree


def claim(
    pools: Pools,
    caller: LocalAccount,
    job_id: int,
    listing_id: int,
    *,
    account: str | None = None,
    tree: PayoutTree | None = None,
) -> Claimed:
    """Claim `account`'s (default: the caller's) share of a pool payout with its proof.

    `tree` (from `payout_tree`) saves reading it again when claiming for many accounts.
    """
    if tree is None:
        tree = payout_tree(pools, job_id, listing_id)
    elif (tree.job_id, tree.listing_id) != (job_id, listing_id) or tree.root != pools.payout(
        job_id, listing_id
    ).root:
        raise IntegrityError(f"the tree given is not the one committed for job {job_id} on pool {listing_id}")
    who = account or caller.address
    leaf = tree.leaf_for(who)
    if leaf is None:
        raise NotFound(f"{who} has no share in job {job_id}'s payouts on pool {listing_id}")
    if pools.is_claimed(job_id, listing_id, leaf.index):
        return Claimed(job_id, listing_id, leaf.index, leaf.amount, True)
    proof = tree.proof(tree.position(leaf.index))
    pools.claim(
        caller, job_id, listing_id, index=leaf.index, account=leaf.account, amount=leaf.amount, proof=proof
    )
    return Claimed(job_id, listing_id, leaf.index, leaf.amount, False)


def payout(pools: Pools, job_id: int, listing_id: int) -> PoolPayout:
    return pools.payout(job_id, listing_id)


def member(pools: Pools, listing_id: int, account: str) -> Member:
    index = pools.member_index(listing_id, account)
    if index is None:
        raise NotFound(f"{account} is not a member of pool {listing_id}")
    return pools.member(listing_id, index)


__all__ = [
    "Claimed",
    "CreatedPool",
    "JoinedPool",
    "PoolStatus",
    "admitted_rows",
    "claim",
    "create_pool",
    "join_pool",
    "member",
    "payout",
    "payout_tree",
    "pool_schema",
    "pool_status",
]


def pool_schema(market: Marketplace, listing: Listing, schema: Schema) -> Schema:
    """A listing's schema as a job claimed now would see it: for a pool, its row count is the
    number of members admitted now (public); any other listing's schema is returned as it is."""
    pools = pool_of(market, listing)
    if pools is None:
        return schema
    return replace(schema, rows=max(1, len(pools.admitted(market, listing.id))))
