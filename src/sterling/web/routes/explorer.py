"""The explorer: blocks, pending and mined transactions, the Marketplace's events, and enclaves."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from sterling.sdk import explorer
from sterling.web.context import WebContext
from sterling.web.routes.deps import ctx

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
    name: str = "",
    job_id: Annotated[int | None, Query(ge=1)] = None,
    listing_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The Marketplace's events, newest first; filter by event name, job or listing."""
    return explorer.events(c.market, name=name or None, job_id=job_id, listing_id=listing_id, limit=limit)


@router.get("/enclaves")
def enclaves(c: Ctx) -> list[dict[str, Any]]:
    """Every enclave that registered: measurement, whether still registered, whether simulated."""
    return explorer.enclaves(c.market, c.state_dir)
