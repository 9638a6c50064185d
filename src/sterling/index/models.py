"""The index's tables: what the follower derives from the chain's events, and where it stopped.

Amounts (wei, micro-ε) are uint256 on chain: they are stored as zero-padded decimal text
(`U256`), so they stay exact on every database and sort correctly as text on an ordinary index.
Every column a page sorts or filters on carries an index.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Table, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

U256_DIGITS = 78  # 2**256 has 78 decimal digits


class U256(TypeDecorator[int]):
    """A non-negative integer below 2**256, stored as 78 decimal digits (exact, text-sortable)."""

    impl = String(U256_DIGITS)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if not 0 <= value < 2**256:
            raise ValueError(f"{value} is not a uint256")
        return f"{value:0{U256_DIGITS}d}"

    def process_result_value(self, value: str | None, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def padded(value: int) -> str:
    """`value` as U256 stores it (for comparisons written by hand)."""
    return f"{value:0{U256_DIGITS}d}"


class Base(DeclarativeBase):
    pass


class ListingRecord(Base):
    __tablename__ = "listings"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    provider: Mapped[str] = mapped_column(String(42), index=True)
    data_hash: Mapped[str] = mapped_column(String(66), index=True)
    data_uri: Mapped[str] = mapped_column(Text)
    manifest_digest: Mapped[str | None] = mapped_column(String(64), index=True)
    contract_hash: Mapped[str] = mapped_column(String(66))
    parent: Mapped[int] = mapped_column(BigInteger)
    price_per_job: Mapped[int] = mapped_column(U256)
    price_per_epsilon: Mapped[int] = mapped_column(U256)
    max_epsilon_per_job: Mapped[int] = mapped_column(U256)
    policy: Mapped[str] = mapped_column(String(42))
    pinned_measurement: Mapped[str] = mapped_column(String(66))
    price_per_prediction: Mapped[int] = mapped_column(U256)
    price_at_cap: Mapped[int] = mapped_column(U256, index=True)
    active: Mapped[bool] = mapped_column(Boolean)
    open: Mapped[bool] = mapped_column(Boolean, index=True)
    epsilon_left: Mapped[int] = mapped_column(U256, index=True)
    published_block: Mapped[int] = mapped_column(BigInteger, index=True)
    published_log: Mapped[int] = mapped_column(Integer)
    #: pending (not read yet), ok, or unreadable; the fields below come from the manifest.
    manifest_state: Mapped[str] = mapped_column(String(12), index=True)
    name: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    classes: Mapped[str | None] = mapped_column(Text)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    rows: Mapped[int | None] = mapped_column(BigInteger, index=True)


Index("ix_listings_open_id", ListingRecord.open, ListingRecord.id)


class ClassRecord(Base):
    """One class name of one listing (the class filter's index)."""

    __tablename__ = "listing_classes"
    listing_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class BudgetRecord(Base):
    __tablename__ = "budgets"
    data_hash: Mapped[str] = mapped_column(String(66), primary_key=True)
    owner: Mapped[str] = mapped_column(String(42), index=True)
    total: Mapped[int] = mapped_column(U256)
    spent: Mapped[int] = mapped_column(U256)
    reserved: Mapped[int] = mapped_column(U256)
    delta: Mapped[int] = mapped_column(U256)


class JobRecord(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    consumer: Mapped[str] = mapped_column(String(42), index=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    escrow: Mapped[int] = mapped_column(U256)
    delta: Mapped[int] = mapped_column(U256)
    job_hash: Mapped[str] = mapped_column(String(66))
    job_uri: Mapped[str] = mapped_column(Text)
    enclave: Mapped[str | None] = mapped_column(String(42), index=True)
    lease_deadline: Mapped[int] = mapped_column(BigInteger)
    submitted_block: Mapped[int] = mapped_column(BigInteger, index=True)
    step: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(BigInteger)
    micro_epsilon: Mapped[int] = mapped_column(U256)
    has_progress: Mapped[bool] = mapped_column(Boolean)


class AllocationRecord(Base):
    __tablename__ = "allocations"
    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    listing_id: Mapped[int] = mapped_column(BigInteger, index=True)
    reserved: Mapped[int] = mapped_column(U256)
    price: Mapped[int] = mapped_column(U256)
    spent: Mapped[int] = mapped_column(U256)
    payout: Mapped[int] = mapped_column(U256)
    weight: Mapped[int] = mapped_column(U256)


class EnclaveRecord(Base):
    __tablename__ = "enclaves"
    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    measurement: Mapped[str] = mapped_column(String(66), index=True)
    hpke_public_key: Mapped[str] = mapped_column(String(66))
    signer: Mapped[str] = mapped_column(String(42))
    registered: Mapped[bool] = mapped_column(Boolean, index=True)
    block: Mapped[int] = mapped_column(BigInteger)
    log_index: Mapped[int] = mapped_column(Integer)


Index("ix_enclaves_newest", EnclaveRecord.block, EnclaveRecord.log_index)


class EventRecord(Base):
    """Every event of the three contracts, decoded (args as the explorer shows them)."""

    __tablename__ = "events"
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    log_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tx_hash: Mapped[str] = mapped_column(String(66))
    contract: Mapped[str] = mapped_column(String(42))
    name: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    listing_id: Mapped[int | None] = mapped_column(BigInteger)
    data_hash: Mapped[str | None] = mapped_column(String(66))
    enclave: Mapped[str | None] = mapped_column(String(42))


Index("ix_events_name", EventRecord.name, EventRecord.block, EventRecord.log_index)
Index("ix_events_job", EventRecord.job_id, EventRecord.block, EventRecord.log_index)
Index("ix_events_listing", EventRecord.listing_id, EventRecord.block, EventRecord.log_index)
Index("ix_events_data", EventRecord.data_hash)
Index("ix_events_enclave", EventRecord.enclave)


class ManifestRecord(Base):
    """A listing manifest by its sha256: content-addressed, so read once and never stale."""

    __tablename__ = "manifests"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    document: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    attempted_at: Mapped[int] = mapped_column(BigInteger)


class SyncRecord(Base):
    """Which chain and deployment the index follows, and the last block it applied."""

    __tablename__ = "sync_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    genesis_hash: Mapped[str] = mapped_column(String(66))
    marketplace: Mapped[str] = mapped_column(String(42))
    contracts: Mapped[list[Any]] = mapped_column(JSON)
    deploy_block: Mapped[int] = mapped_column(BigInteger)
    synced_block: Mapped[int] = mapped_column(BigInteger)


class BlockRecord(Base):
    """Hashes of recent synced blocks: a changed one is a reorg, rolled back to the newest that matches."""

    __tablename__ = "sync_blocks"
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(66))


def table(model: type[Base]) -> Table:
    found = model.__table__
    assert isinstance(found, Table)
    return found


LISTINGS = table(ListingRecord)
CLASSES = table(ClassRecord)
BUDGETS = table(BudgetRecord)
JOBS = table(JobRecord)
ALLOCATIONS = table(AllocationRecord)
ENCLAVES = table(EnclaveRecord)
EVENTS = table(EventRecord)
MANIFESTS = table(ManifestRecord)
SYNC = table(SyncRecord)
BLOCKS = table(BlockRecord)
