"""The marketplace: chain status, dev accounts, listings (pages from the index, with previews), and templates.

Lists answer one page: `{"items": [...], "total": N, "page": P, "per_page": K, "pages": M}`;
`per_page` above `MAX_PER_PAGE` or `page` below 1 is refused with 422 naming the bound.
"""

from __future__ import annotations

import ast
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from sterling.index import JobQuery, ListingQuery
from sterling.sdk import explorer, listings
from sterling.web.context import WebContext
from sterling.web.routes.deps import Paged, ctx

router = APIRouter(tags=["market"])
Ctx = Annotated[WebContext, Depends(ctx)]

JOB_TEMPLATES = {
    "logistic_regression": (
        "Logistic regression",
        "One linear layer over the flattened features: fast, private at small ε, a strong baseline.",
    ),
    "mlp": (
        "Multi-layer perceptron",
        "Two linear layers with a tanh between them, for tables and small images.",
    ),
    "cnn": (
        "Convolutional network",
        "Two convolutions with group norm (batch norm would mix examples) and pooling, for images.",
    ),
}


@router.get("/status")
def status(c: Ctx) -> dict[str, Any]:
    """The chain and Marketplace the server works on; `simulation` is true when the enclave is simulated."""
    m = c.market
    return {
        "chain_id": m.chain.chain_id,
        "block": int(m.chain.w3.eth.block_number),
        "marketplace": m.address,
        "rpc_url": m.chain.rpc_url,
        "listings": m.listing_count(),
        "jobs": m.job_count(),
        "enclaves": m.enclave_count(),
        "simulation": explorer.simulated(m, c.state_dir),
    }


@router.get("/accounts")
def accounts(c: Ctx) -> list[dict[str, Any]]:
    """The local chain's dev accounts, with ether, Marketplace balance and what they have done here."""
    m = c.market
    index = c.indexed()

    def provider(address: str) -> bool:
        return index.listings(ListingQuery(provider=address, per_page=1)).total > 0

    def consumer(address: str) -> bool:
        return index.jobs(JobQuery(consumer=address, per_page=1)).total > 0

    admin = m.admin()
    out = []
    for i, account in enumerate(c.accounts):
        address = account.address
        role = (
            "admin"
            if address == admin
            else "provider"
            if provider(address)
            else "consumer"
            if consumer(address)
            else None
        )
        out.append(
            {
                "index": i,
                "address": address,
                "ether_wei": str(int(m.chain.w3.eth.get_balance(address))),
                "market_balance_wei": str(m.balance_of(address)),
                "role_hint": role,
            }
        )
    return out


@router.get("/listings")
def all_listings(
    c: Ctx,
    paged: Paged,
    q: Annotated[str, Query(max_length=200)] = "",
    provider: str = "",
    open_: Annotated[bool | None, Query(alias="open")] = None,
    open_only: bool = False,
    class_: Annotated[str, Query(alias="class", max_length=200)] = "",
    modality: Annotated[Literal["", "tabular", "image"], Query()] = "",
    sort: Literal["id", "price", "published", "epsilon_left", "rows"] = "id",
    order: Literal["asc", "desc"] = "asc",
) -> dict[str, Any]:
    """A page of listings: full-text search `q` over names, descriptions and classes, filtered by
    provider, open (`open_only` is the older name), class and modality, sorted on an indexed
    column; `price` sorts by the price at the per-job ε cap."""
    query = ListingQuery(
        q=q,
        provider=provider or None,
        open_only=open_only if open_ is None else open_,
        class_name=class_ or None,
        modality=modality or None,
        sort=sort,
        descending=order == "desc",
        page=paged.page,
        per_page=paged.per_page,
    )
    return listings.page(c.indexed(), query).map(lambda item: item.to_json())


@router.get("/listings/{listing_id}")
def one_listing(c: Ctx, listing_id: int) -> dict[str, Any]:
    """One listing with its provider contract's source, data hash and manifest URI."""
    return listings.summary(c.market, listing_id).detail_json()


@router.get(
    "/listings/{listing_id}/preview.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def preview(c: Ctx, listing_id: int) -> Response:
    """The sample preview the provider published (404 where they published none)."""
    png = listings.summary(c.market, listing_id).preview_png()
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})


def _title(source: str, name: str) -> str:
    doc = (ast.get_docstring(ast.parse(source)) or "").strip()
    return doc.splitlines()[0] if doc else name.replace("_", " ")


def _defines_check(source: str) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in ast.parse(source).body)


@router.get("/templates")
def templates() -> dict[str, Any]:
    """Starting points for the editor: job families, and the shipped provider contract examples."""
    from sterling.enclave.contracts import example, examples
    from sterling.privacy.graph import template
    from sterling.sdk.assemble import template_job

    return {
        "jobs": {
            family: {
                "title": title,
                "description": description,
                "model": template(family, classes=2).model_dump(mode="json"),
                "text": json.dumps(template_job(family, listing_ids=[1]).model_dump(mode="json"), indent=2),
            }
            for family, (title, description) in JOB_TEMPLATES.items()
        },
        "provider_contracts": {
            name: {"title": _title(example(name), name), "source": example(name)}
            for name in examples()
            if _defines_check(example(name))
        },
    }
