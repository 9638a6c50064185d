"""What a buyer sees of the listings: terms, budget, the public schema, and a published preview.

One summary per listing, joined from the chain (terms, budget) and the listing's public manifest
(name, schema, class counts, preview), shared by the web app's marketplace and anything else that
browses. Nothing here is secret: the manifest is public and content-addressed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO32, ZERO_ADDRESS, Listing
from sterling.chain.units import from_delta, from_micro
from sterling.errors import NotFound, SterlingError
from sterling.storage.blobs import fetch_verified, parse_address
from sterling.storage.manifest import read_manifest

if TYPE_CHECKING:
    from sterling.index import ListingQuery, MarketIndex, Page

SORT_KEYS = ("id", "price", "epsilon_left", "rows")


@dataclass(frozen=True)
class ListingSummary:
    """A listing as the marketplace shows it; `manifest` is None if it cannot be read."""

    listing: Listing
    manifest: dict[str, Any] | None

    @property
    def schema(self) -> dict[str, Any]:
        return dict((self.manifest or {}).get("schema") or {})

    @property
    def name(self) -> str:
        return str((self.manifest or {}).get("name") or f"listing {self.listing.id}")

    @property
    def allowed_families(self) -> list[str] | None:
        terms = (self.manifest or {}).get("terms") or {}
        families = terms.get("allowed_model_families")
        return [str(f) for f in families] if families else None

    @property
    def price_at_cap(self) -> int:
        return self.listing.terms.list_price(self.listing.terms.max_epsilon_per_job)

    @property
    def preview(self) -> dict[str, Any] | None:
        ref = (self.manifest or {}).get("preview")
        return ref if isinstance(ref, dict) and ref.get("uri") else None

    def to_json(self) -> dict[str, Any]:
        """The web API's Listing; wei amounts as decimal strings (they pass 2^53)."""
        listing, terms, budget = self.listing, self.listing.terms, self.listing.budget
        schema = self.schema
        counts = (self.manifest or {}).get("class_counts")
        classes = [str(c) for c in schema.get("classes") or []]
        return {
            "id": listing.id,
            "name": self.name,
            "description": str((self.manifest or {}).get("description") or ""),
            "provider": listing.provider,
            "open": listing.open,
            "modality": schema.get("modality"),
            "rows": schema.get("rows"),
            "input_shape": schema.get("shape"),
            "classes": classes,
            "class_counts": [int(counts[c]) for c in classes]
            if isinstance(counts, dict) and all(c in counts for c in classes)
            else None,
            "terms": {
                "price_per_job_wei": str(terms.price_per_job),
                "price_per_epsilon_wei": str(terms.price_per_epsilon),
                "max_epsilon_per_job": from_micro(terms.max_epsilon_per_job),
                "delta": from_delta(budget.delta),
                "policy": None if terms.policy == ZERO_ADDRESS else terms.policy,
                "allowed_families": self.allowed_families,
                "has_contract": listing.contract_hash != ZERO32,
            },
            "budget": {
                "epsilon_total": from_micro(budget.total),
                "epsilon_spent": from_micro(budget.spent),
                "epsilon_reserved": from_micro(budget.reserved),
                "epsilon_left": from_micro(max(0, budget.remaining)),
            },
            "price_at_cap_wei": str(self.price_at_cap),
            "preview": self.preview is not None,
            "parent": listing.parent or None,
        }

    def contract_source(self) -> str | None:
        """The provider contract's source, checked against the hash on chain; None if there is none."""
        if self.listing.contract_hash == ZERO32:
            return None
        ref = (self.manifest or {}).get("contract") or {}
        raw = fetch_verified(str(ref.get("uri", "")), self.listing.contract_hash)
        return raw.decode("utf-8", "replace")

    def detail_json(self) -> dict[str, Any]:
        return {
            **self.to_json(),
            "contract_source": self.contract_source(),
            "data_hash": "0x" + self.listing.data_hash.hex(),
            "manifest_uri": self.listing.data_uri,
        }

    def preview_png(self) -> bytes:
        """The preview image the provider published, verified against the manifest; NotFound if none."""
        ref = self.preview
        if ref is None:
            raise NotFound(f"listing {self.listing.id} has no published preview")
        return fetch_verified(str(ref["uri"]), parse_address(str(ref["sha256"])))


def summary(market: Marketplace, listing_id: int) -> ListingSummary:
    """One listing with its manifest; NotFound for an unknown id."""
    listing = market.listing(listing_id)
    return ListingSummary(listing, _manifest_or_none(listing.data_uri))


def page(index: MarketIndex, query: ListingQuery) -> Page[ListingSummary]:
    """One page of listings from the index: filtered, searched, sorted on indexed columns, with the total.

    The manifests come from the index's cache, so a page reads neither the chain nor storage.
    """
    from sterling.index import Page

    found = index.listings(query)
    items = [ListingSummary(row.listing, row.manifest) for row in found.items]
    return Page(items, found.total, found.page, found.per_page)


def summaries(
    market: Marketplace,
    *,
    open_only: bool = False,
    modality: str | None = None,
    query: str | None = None,
    sort: str = "id",
    descending: bool = False,
) -> list[ListingSummary]:
    """Every listing, filtered (open, modality, a text `query` over name, description and classes) and sorted.

    It reads every listing and manifest from the chain and storage: for pages, use `page` (the index).

    `sort` is one of id, price (the price at the per-job ε cap), epsilon_left or rows.
    """
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    out = []
    needle = (query or "").strip().lower()
    for listing in market.listings(open_only=open_only):
        item = ListingSummary(listing, _manifest_or_none(listing.data_uri))
        if modality and item.schema.get("modality") != modality:
            continue
        if needle:
            haystack = " ".join(
                [item.name, str((item.manifest or {}).get("description") or ""), *item.to_json()["classes"]]
            ).lower()
            if needle not in haystack:
                continue
        out.append(item)

    def key(item: ListingSummary) -> tuple[float, int]:
        value: float = {
            "id": lambda: float(item.listing.id),
            "price": lambda: float(item.price_at_cap),
            "epsilon_left": lambda: float(item.listing.budget.remaining),
            "rows": lambda: float(item.schema.get("rows") or 0),
        }[sort]()
        return value, item.listing.id

    return sorted(out, key=key, reverse=descending)


def _manifest_or_none(uri: str) -> dict[str, Any] | None:
    try:
        return read_manifest(uri)
    except (SterlingError, OSError, ValueError):
        return None
