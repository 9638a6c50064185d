"""The explorer: blocks, pending and mined transactions, the Marketplace's events, and enclaves."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from sterling.sdk import explorer
from sterling.web.context import WebContext
from sterling.web.routes.deps import ctx, paging

router = APIRouter(tags=["explorer"])
Ctx = Annotated[WebContext, Depends(ctx)]


@router.get("/explorer/blocks")
def blocks(
    c: Ctx, limit: Annotated[int, Query(ge=1, le=200)] = 20, before: Annotated[int | None, Query(ge=0)] = None
) -> list[dict[str, Any]]:
    """The latest blocks, newest first (below `before` to page back)."""
    return explorer.blocks(c.market, limit=limit, before=before)


@router.get("/explorer/blocks/{number}")
def block(c: Ctx, number: int) -> dict[str, Any]:
    """One block with its transactions, decoded where they call the Marketplace."""
    return explorer.block(c.market, number)


@router.get("/explorer/transactions")
def transactions(c: Ctx, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, list[dict[str, Any]]]:
    """Transactions waiting for a block, and the latest mined ones."""
    return explorer.transactions(c.market, limit=limit)


@router.get("/explorer/transactions/{tx_hash}")
def transaction(c: Ctx, tx_hash: str) -> dict[str, Any]:
    """One transaction with the Marketplace events it emitted."""
    return explorer.transaction(c.market, tx_hash)


@router.get("/explorer/events")
def events(
    c: Ctx,
    kind: Annotated[str, Query(max_length=64)] = "",
    job: Annotated[int | None, Query(ge=1)] = None,
    listing: Annotated[int | None, Query(ge=1)] = None,
    page: int = 1,
    per_page: int | None = None,
    name: Annotated[str, Query(max_length=64)] = "",
    job_id: Annotated[int | None, Query(ge=1)] = None,
    listing_id: Annotated[int | None, Query(ge=1)] = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """A page of the deployment's events, newest first; filter by event `kind`, `job` or `listing`
    (`name`, `job_id`, `listing_id` and `limit` are the older names of the filters and `per_page`)."""
    paged = paging(page, per_page if per_page is not None else limit if limit is not None else 50)
    return explorer.events(
        c.indexed(),
        kind=kind or name or None,
        job_id=job if job is not None else job_id,
        listing_id=listing if listing is not None else listing_id,
        page=paged.page,
        per_page=paged.per_page,
    )


@router.get("/enclaves")
def enclaves(c: Ctx, limit: int = 100) -> list[dict[str, Any]]:
    """The enclaves that registered, newest first (at most `limit`, up to MAX_PER_PAGE): measurement,
    whether still registered, whether simulated."""
    bounded = paging(1, limit).per_page
    return explorer.enclaves(c.market, c.state_dir, c.indexed(), limit=bounded)
