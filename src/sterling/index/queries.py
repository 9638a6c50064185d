"""Pages of listings, events, jobs and enclaves, read from the index with bounded queries.

Every query takes a page number and a page size no larger than `MAX_PER_PAGE`, sorts on an
indexed column (ties broken by id), and returns a `Page` with the total that matched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Connection, Integer, Select, and_, column, func, select, text, true

from sterling.chain.types import ZERO_ADDRESS, Budget, JobState, Listing, Terms
from sterling.chain.units import from_micro
from sterling.errors import UsageError
from sterling.index.models import ALLOCATIONS, BUDGETS, CLASSES, ENCLAVES, EVENTS, JOBS, LISTINGS, MANIFESTS

MAX_PER_PAGE = 200
LISTING_SORTS = ("id", "price", "published", "epsilon_left", "rows")
T = TypeVar("T")


def check_page(page: int, per_page: int) -> None:
    """UsageError naming the bound a page or page size breaks."""
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise UsageError(f"page must be a whole number of at least 1, got {page!r}")
    if isinstance(per_page, bool) or not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
        raise UsageError(f"per_page must be from 1 to {MAX_PER_PAGE} (MAX_PER_PAGE), got {per_page!r}")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return (self.total + self.per_page - 1) // self.per_page

    def map(self, fn: Callable[[T], Any]) -> dict[str, Any]:
        """The web API's envelope, each item turned into JSON by `fn`."""
        return {
            "items": [fn(item) for item in self.items],
            "total": self.total,
            "page": self.page,
            "per_page": self.per_page,
            "pages": self.pages,
        }


@dataclass(frozen=True)
class ListingQuery:
    q: str = ""
    provider: str | None = None
    open_only: bool = False
    class_name: str | None = None
    modality: str | None = None
    sort: str = "id"
    descending: bool = False
    page: int = 1
    per_page: int = 50

    def __post_init__(self) -> None:
        check_page(self.page, self.per_page)
        if self.sort not in LISTING_SORTS:
            raise UsageError(f"sort must be one of {', '.join(LISTING_SORTS)}, got {self.sort!r}")
        if len(self.q) > 200:
            raise UsageError(f"a search is at most 200 characters, got {len(self.q)}")


@dataclass(frozen=True)
class ListingRow:
    """A listing as the index knows it: the chain's record (no sealed key) and its manifest."""

    listing: Listing
    manifest: dict[str, Any] | None
    published_block: int


@dataclass(frozen=True)
class EventQuery:
    kind: str | None = None
    job_id: int | None = None
    listing_id: int | None = None
    page: int = 1
    per_page: int = 50

    def __post_init__(self) -> None:
        check_page(self.page, self.per_page)


@dataclass(frozen=True)
class JobQuery:
    consumer: str | None = None
    page: int = 1
    per_page: int = 50

    def __post_init__(self) -> None:
        check_page(self.page, self.per_page)


@dataclass(frozen=True)
class JobRow:
    id: int
    consumer: str
    state: JobState
    escrow: int
    has_progress: bool
    step: int
    steps: int
    micro_epsilon: int
    listing_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """As `sdk.jobview.job_summaries` shows a job."""
        return {
            "id": self.id,
            "consumer": self.consumer,
            "state": "training" if self.state is JobState.CLAIMED and self.has_progress else self.state.label,
            "escrow_wei": str(self.escrow),
            "listing_ids": self.listing_ids,
            "step": self.step,
            "steps": self.steps,
            "epsilon_spent": from_micro(self.micro_epsilon),
        }


@dataclass(frozen=True)
class EnclaveRow:
    address: str
    measurement: bytes
    hpke_public_key: bytes
    signer: str
    registered: bool
    block: int


def _search_terms(q: str) -> list[str]:
    return re.findall(r"\w+", q.lower())


def _search(dialect: str, q: str) -> ColumnElement[bool] | None:
    terms = _search_terms(q)
    if not terms:
        return None
    lt = LISTINGS
    if dialect == "sqlite":
        match = " ".join(f'"{t}"*' for t in terms)
        ids = text("SELECT rowid FROM listing_search WHERE listing_search MATCH :match").bindparams(
            match=match
        )
        return lt.c.id.in_(ids.columns(column("rowid", Integer)))
    query = " & ".join(f"{t}:*" for t in terms)
    return text("listings.search @@ to_tsquery('simple', :tsq)").bindparams(tsq=query)  # type: ignore[return-value]


def _listing_filters(dialect: str, q: ListingQuery) -> list[ColumnElement[bool]]:
    lt = LISTINGS.c
    out: list[ColumnElement[bool]] = []
    if q.open_only:
        out.append(lt.open.is_(True))
    if q.provider:
        out.append(func.lower(lt.provider) == q.provider.lower())
    if q.modality:
        out.append(lt.modality == q.modality)
    if q.class_name:
        ct = CLASSES.c
        out.append(lt.id.in_(select(ct.listing_id).where(ct.name == q.class_name)))
    found = _search(dialect, q.q)
    if found is not None:
        out.append(found)
    return out


def _listing_order(q: ListingQuery) -> list[Any]:
    lt = LISTINGS.c
    options: dict[str, list[Any]] = {
        "id": [lt.id],
        "price": [lt.price_at_cap, lt.id],
        "published": [lt.published_block, lt.published_log],
        "epsilon_left": [lt.epsilon_left, lt.id],
        "rows": [func.coalesce(lt.rows, 0), lt.id],
    }
    columns = options[q.sort]
    return [c.desc() if q.descending else c.asc() for c in columns]


def _total(conn: Connection, query: Select[Any]) -> int:
    return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())


def listings(conn: Connection, q: ListingQuery) -> Page[ListingRow]:
    lt, bt, mt = LISTINGS, BUDGETS, MANIFESTS
    filters = _listing_filters(conn.dialect.name, q)
    base = select(lt.c.id).where(and_(*filters)) if filters else select(lt.c.id)
    total = _total(conn, base)
    # The page's ids first, from the listings table alone (an index scan, however deep the page),
    # then only those rows joined with their budgets and manifests: an OFFSET over the join would
    # read every skipped listing's manifest document.
    order = _listing_order(q)
    ids = [
        int(i)
        for i in conn.execute(
            base.order_by(*order).limit(q.per_page).offset((q.page - 1) * q.per_page)
        ).scalars()
    ]
    query = (
        select(lt, bt.c.owner, bt.c.total, bt.c.spent, bt.c.reserved, bt.c.delta, mt.c.document, mt.c.ok)
        .select_from(
            lt.outerjoin(bt, bt.c.data_hash == lt.c.data_hash).outerjoin(
                mt,
                mt.c.digest == lt.c.manifest_digest,
            )
        )
        .where(lt.c.id.in_(ids))
        .order_by(*order)
    )
    rows = [_listing_row(r) for r in conn.execute(query)]
    return Page(rows, total, q.page, q.per_page)


def _b(hex_text: str | None) -> bytes:
    return bytes.fromhex((hex_text or "").removeprefix("0x"))


def _listing_row(r: Any) -> ListingRow:
    terms = Terms(
        r.price_per_job,
        r.price_per_epsilon,
        r.max_epsilon_per_job,
        r.policy or ZERO_ADDRESS,
        _b(r.pinned_measurement),
        r.price_per_prediction,
    )
    budget = Budget(
        r.owner or ZERO_ADDRESS, int(r.total or 0), int(r.spent or 0), int(r.reserved or 0), int(r.delta or 0)
    )
    listing = Listing(
        id=r.id,
        provider=r.provider,
        data_hash=_b(r.data_hash),
        data_uri=r.data_uri,
        sealed_key=b"",
        contract_hash=_b(r.contract_hash),
        terms=terms,
        parent=r.parent,
        active=r.active,
        budget=budget,
    )
    return ListingRow(listing, r.document if r.ok else None, r.published_block)


def events(conn: Connection, q: EventQuery) -> Page[dict[str, Any]]:
    et = EVENTS.c
    filters: list[ColumnElement[bool]] = []
    if q.kind:
        filters.append(et.name == q.kind)
    if q.job_id is not None:
        filters.append(et.job_id == q.job_id)
    if q.listing_id is not None:
        filters.append(et.listing_id == q.listing_id)
    where = and_(true(), *filters)
    total = _total(conn, select(et.block).where(where))
    query = (
        select(et.name, et.block, et.tx_hash, et.log_index, et.args)
        .where(where)
        .order_by(et.block.desc(), et.log_index.desc())
        .limit(q.per_page)
        .offset((q.page - 1) * q.per_page)
    )
    items = [
        {"name": r.name, "block": r.block, "tx_hash": r.tx_hash, "log_index": r.log_index, "args": r.args}
        for r in conn.execute(query)
    ]
    return Page(items, total, q.page, q.per_page)


def jobs(conn: Connection, q: JobQuery) -> Page[JobRow]:
    jt, at = JOBS.c, ALLOCATIONS.c
    where = func.lower(jt.consumer) == q.consumer.lower() if q.consumer else true()
    total = _total(conn, select(jt.id).where(where))
    found = list(
        conn.execute(
            select(JOBS)
            .where(where)
            .order_by(jt.id.desc())
            .limit(q.per_page)
            .offset((q.page - 1) * q.per_page)
        )
    )
    ids = [r.id for r in found]
    listing_ids: dict[int, list[int]] = {i: [] for i in ids}
    if ids:
        for a in conn.execute(
            select(at.job_id, at.listing_id).where(at.job_id.in_(ids)).order_by(at.job_id, at.position)
        ):
            listing_ids[a.job_id].append(a.listing_id)
    items = [
        JobRow(
            r.id,
            r.consumer,
            JobState(r.state),
            r.escrow,
            r.has_progress,
            r.step,
            r.steps,
            r.micro_epsilon,
            listing_ids[r.id],
        )
        for r in found
    ]
    return Page(items, total, q.page, q.per_page)


def enclaves(conn: Connection, *, registered_only: bool, limit: int) -> Sequence[EnclaveRow]:
    """Enclaves newest registration first (at most `limit`)."""
    if not 1 <= limit <= MAX_PER_PAGE:
        raise UsageError(f"limit must be from 1 to {MAX_PER_PAGE}, got {limit}")
    t = ENCLAVES.c
    query = select(ENCLAVES).order_by(t.block.desc(), t.log_index.desc()).limit(limit)
    if registered_only:
        query = query.where(t.registered.is_(True))
    return [
        EnclaveRow(r.address, _b(r.measurement), _b(r.hpke_public_key), r.signer, r.registered, r.block)
        for r in conn.execute(query)
    ]
