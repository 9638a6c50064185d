"""The marketplace: chain status, dev accounts, listings (with previews), and templates."""

from __future__ import annotations

import ast
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from sterling.sdk import explorer, listings
from sterling.web.context import WebContext
from sterling.web.routes.deps import ctx

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
    providers = {item.provider for item in m.listings()}
    consumers = {job.consumer for job in m.jobs()}
    admin = m.admin()
    out = []
    for i, account in enumerate(c.accounts):
        address = account.address
        role = (
            "admin"
            if address == admin
            else "provider"
            if address in providers
            else "consumer"
            if address in consumers
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
    open_only: bool = False,
    modality: Annotated[Literal["", "tabular", "image"], Query()] = "",
    q: str = "",
    sort: Literal["id", "price", "epsilon_left", "rows"] = "id",
    order: Literal["asc", "desc"] = "asc",
) -> list[dict[str, Any]]:
    """Every listing, filtered and sorted; `price` sorts by the price at the per-job ε cap."""
    found = listings.summaries(
        c.market,
        open_only=open_only,
        modality=modality or None,
        query=q,
        sort=sort,
        descending=order == "desc",
    )
    return [item.to_json() for item in found]


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
