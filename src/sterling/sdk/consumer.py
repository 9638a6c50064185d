"""The consumer's side: what a job needs to know about the listings it names."""

from __future__ import annotations

from typing import Any

from sterling.chain.marketplace import Marketplace
from sterling.chain.units import from_delta, from_micro
from sterling.data.dataset import Schema
from sterling.errors import NotFound, SterlingError, UsageError
from sterling.privacy.verifier import ListingView
from sterling.sdk.provider import read_manifest

ZERO = "0x0000000000000000000000000000000000000000"


def listing_views(
    market: Marketplace, ids: list[int], *, consumer: str | None = None
) -> dict[int, ListingView]:
    """ListingViews from the chain and each listing's public manifest; unknown ids are left out."""
    views = {}
    for lid in ids:
        try:
            listing = market.listing(lid)
        except NotFound:
            continue
        try:
            manifest = read_manifest(listing.data_uri)
        except (SterlingError, OSError, ValueError) as exc:
            raise UsageError(
                f"listing {lid}: its manifest at {listing.data_uri} cannot be read ({exc})"
            ) from None
        terms = manifest.get("terms") or {}
        families = terms.get("allowed_model_families")
        quote = None
        if consumer is not None and listing.terms.policy != ZERO:
            quote = market.quote(consumer, lid, listing.terms.max_epsilon_per_job)
        views[lid] = ListingView(
            listing_id=lid,
            schema=Schema.from_json(manifest["schema"]),
            max_epsilon_per_job=from_micro(listing.terms.max_epsilon_per_job),
            remaining_epsilon=from_micro(listing.budget.remaining),
            delta=from_delta(listing.budget.delta),
            price_per_job_wei=listing.terms.price_per_job,
            price_per_epsilon_wei=listing.terms.price_per_epsilon,
            open=listing.open,
            quote_wei=quote,
            allowed_families=tuple(families) if families else None,
        )
    return views


def views_from_json(doc: Any) -> dict[int, ListingView]:
    """ListingViews from a JSON list (for offline verification and tests)."""
    if not isinstance(doc, list):
        raise UsageError("listings file: expected a JSON list of listings")
    out = {}
    for i, item in enumerate(doc):
        try:
            fams = item.get("allowed_families")
            view = ListingView(
                listing_id=int(item["listing_id"]),
                schema=Schema.from_json(item["schema"]),
                max_epsilon_per_job=float(item["max_epsilon_per_job"]),
                remaining_epsilon=float(item["remaining_epsilon"]),
                delta=float(item["delta"]),
                price_per_job_wei=int(item.get("price_per_job_wei", 0)),
                price_per_epsilon_wei=int(item.get("price_per_epsilon_wei", 0)),
                open=bool(item.get("open", True)),
                quote_wei=int(item["quote_wei"]) if item.get("quote_wei") is not None else None,
                allowed_families=tuple(fams) if fams else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"listings file: item {i}: {type(exc).__name__}: {exc}") from None
        out[view.listing_id] = view
    return out
