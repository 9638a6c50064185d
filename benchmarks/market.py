"""A market at scale: the indexed API beside a direct read of the chain, in one run.

Run: `sterling bench market --format json` (100,000 listings, 1,000,000 events; `--listings N
--events M` for a smaller market, `--quick` for 300 and 2,000).

One run on a fresh anvil on 127.0.0.1 (see benchmarks/_market_world.py for how the market is
made fast: real, locally signed transactions to Sterling's Marketplace, sent raw in batches and
mined into large blocks; a manifest per listing in the blob store; the events beyond the
listings' own are job traffic, submissions over 32 listings and their cancellations). Then:

- `index`: `MarketIndex.sync` follows the whole history into SQLite (the embedded default);
  `events_per_second` is its events over its own seconds (goal ≥ 2,000).
- `market_page`: p50/p95 over repeated requests of `GET /api/listings` from the web app served
  on loopback (uvicorn, the real guard and token): the first page, a search, and a deep page
  (goal p95 < 100 ms); the same queries on `MarketIndex.listings` itself; and the direct read of
  today's market page (every listing: three JSON-RPC calls and its manifest) timed on a sample of
  the newest listings, with the per-listing cost and its extrapolation to the whole market marked
  `extrapolated` (measured whole when the sample covers every listing).
- `submission`: the JSON-RPC calls and time of the submit path's reads (`choose_enclave` and
  `listing_views` for a job over 4 listings) with almost no history and again at the end.
- `consistency`: the indexed totals and first page equal the chain's.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from web3.providers.rpc import HTTPProvider

from sterling.cli.bench import load as load_bench
from sterling.config import Settings
from sterling.errors import SterlingError
from sterling.sdk import consumer as sdk_consumer
from sterling.sdk.listings import ListingSummary
from sterling.sdk.trust import Trust, choose_enclave
from sterling.storage.manifest import read_manifest

world_mod = load_bench("_market_world")
serving = load_bench("_market_serve")
REPEATS, PER_PAGE, SEARCH = serving.REPEATS, serving.PER_PAGE, serving.SEARCH

FULL_LISTINGS, FULL_EVENTS = 100_000, 1_000_000
QUICK_LISTINGS, QUICK_EVENTS = 300, 2_000
SAMPLE = 1_000  # listings read directly from the chain (today's market page) to time it
GOAL_P95_MS, GOAL_EVENTS_PER_S = 100.0, serving.GOAL_EVENTS_PER_S
SMALL_HISTORY = 32  # listings published before the first submission measurement
err = Console(stderr=True)


@dataclass(frozen=True)
class Sizes:
    listings: int
    events: int


@contextmanager
def _progress() -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        yield progress


# ------------------------------------------------------------------ JSON-RPC accounting


class CountingProvider(HTTPProvider):
    """web3's HTTP provider, counting the JSON-RPC calls it sends (each call of a batch too)."""

    calls = 0

    def make_request(self, method: Any, params: Any) -> Any:
        self.calls += 1
        return super().make_request(method, params)

    def make_batch_request(self, requests: Any) -> Any:
        self.calls += len(requests)
        return super().make_batch_request(requests)


class CallCounter:
    """Swaps the chain's provider for a counting one (same URL) and measures calls and time."""

    def __init__(self, chain: Any) -> None:
        self.provider = CountingProvider(chain.rpc_url, request_kwargs={"timeout": 120})
        chain.w3.provider = self.provider

    @contextmanager
    def counting(self) -> Iterator[dict[str, float]]:
        out: dict[str, float] = {}
        before, started = self.provider.calls, time.perf_counter()
        try:
            yield out
        finally:
            out["rpc_calls"] = self.provider.calls - before
            out["ms"] = round((time.perf_counter() - started) * 1000, 2)


# ------------------------------------------------------------------ the direct read (today's page)


def direct_read(
    world: Any, counter: CallCounter, ids: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read `ids` as today's market page does (`sdk.listings.summaries`, one listing at a time):
    `market.listing` (listing_count, listing, budgets: three calls) and its manifest."""
    items = []
    manifests = 0
    with counter.counting() as cost:
        for lid in ids:
            listing = world.market.listing(lid)
            try:
                doc: dict[str, Any] | None = read_manifest(listing.data_uri)
                manifests += 1
            except (SterlingError, OSError, ValueError):
                doc = None
            name = str((doc or {}).get("name") or f"listing {lid}")
            items.append({"id": lid, "name": name, "open": listing.open, "doc": doc})
    return items, {**cost, "manifests_read": manifests}


def _matches(item: dict[str, Any], needle: str) -> bool:
    doc = item["doc"] or {}
    classes = [str(c) for c in (doc.get("schema") or {}).get("classes") or []]
    return needle in " ".join([item["name"], str(doc.get("description") or ""), *classes]).lower()


def measure_direct(world: Any, counter: CallCounter, sample: int) -> dict[str, Any]:
    """The direct read of the newest `sample` listings; the whole market when it has no more."""
    total = world.market.listing_count()
    ids = list(range(total, max(0, total - sample), -1))
    items, cost = direct_read(world, counter, ids)
    whole = len(ids) == total
    per_listing = cost["ms"] / max(1, len(ids))
    first = [{"id": i["id"], "name": i["name"]} for i in items[:PER_PAGE]]
    search = sum(1 for i in items if _matches(i, SEARCH)) if whole else None
    return {
        "listings_read": len(ids),
        "rpc_calls": cost["rpc_calls"],
        "manifests_read": cost["manifests_read"],
        "seconds": round(cost["ms"] / 1000, 3),
        "per_listing_ms": round(per_listing, 3),
        "rpc_calls_per_listing": round(cost["rpc_calls"] / max(1, len(ids)), 2),
        "market_page_seconds": round(per_listing * total / 1000, 2),
        "market_page_extrapolated": not whole,
        "total": total,
        "first_page": first,
        "search_total": search,
    }


# ------------------------------------------------------------------ the submit path's reads


def _submission_reads(world: Any, counter: CallCounter, index: Any) -> dict[str, Any]:
    market = world.market
    trust = Trust.of(world_mod.MEASUREMENT, market.attestation_signer())
    consumer = world.chain.dev_accounts[world_mod.CONSUMER].address
    ids = list(range(1, 5))
    with counter.counting() as cost:
        pins = [market.listing(lid).terms.pinned_measurement for lid in ids]
        enclave = choose_enclave(market, trust=trust, pins=pins, index=index)
        views = sdk_consumer.listing_views(market, ids, consumer=consumer, epsilons=dict.fromkeys(ids, 0.5))
    if len(views) != len(ids) or enclave.measurement != world_mod.MEASUREMENT:
        raise SterlingError("the submit path's reads did not find the listings or the enclave")
    return cost


def _best_of_three(measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The fewest calls and milliseconds of three runs, and the most calls (a run may sync more)."""
    runs = [measure() for _ in range(3)]
    calls = [r["rpc_calls"] for r in runs]
    return {"rpc_calls": min(calls), "rpc_calls_max": max(calls), "ms": min(r["ms"] for r in runs)}


def measure_submission(world: Any, counter: CallCounter, index: Any) -> dict[str, Any]:
    """What a submission reads before its transaction (`sdk.consumer.submit_job`): the listings'
    pins, the enclave to seal to (`choose_enclave`) and the listings' views, once through the
    index (kept synced, as a long-running client or the web app keeps it) and once from the
    chain's event history; the best of three runs each (and the most calls any run made)."""
    index.sync(world.market)
    indexed = _best_of_three(lambda: _submission_reads(world, counter, index))
    direct = _best_of_three(lambda: _submission_reads(world, counter, None))
    return {
        "history_events": world.events,
        "history_blocks": int(world.market.chain.w3.eth.block_number),
        "indexed": indexed,
        "direct": direct,
    }


# ------------------------------------------------------------------ one run


def _same_page(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return [(x["id"], x["name"]) for x in a] == [(x["id"], x["name"]) for x in b]


def _published_matches(listing_id: int) -> bool:
    """Whether the manifest the generator published for `listing_id` mentions the search word
    (in its name, description or classes), as the direct read's search decides it."""
    doc = world_mod.manifest(listing_id)
    return _matches({"name": doc["name"], "doc": doc}, SEARCH)


def consistency(
    direct: dict[str, Any], indexed: dict[str, Any], http: dict[str, Any], idx_page: Any
) -> dict[str, Any]:
    first = [{"id": r.listing.id, "name": ListingSummary(r.listing, r.manifest).name} for r in idx_page.items]
    search = direct["search_total"]
    expected = sum(1 for i in range(1, direct["total"] + 1) if _published_matches(i))
    checks = {
        "total": direct["total"] == indexed["first"]["total"] == http["first"]["total"],
        "search_total_as_published": expected == indexed["search"]["total"] == http["search"]["total"],
        "first_page": all(_same_page(direct["first_page"], p) for p in (first, http["first_page"])),
        "search_total": None
        if search is None
        else search == indexed["search"]["total"] == http["search"]["total"],
    }
    return {**checks, "all": all(v is not False for v in checks.values())}


def _generate(world: Any, sizes: Sizes, counter: CallCounter) -> dict[str, Any]:
    with _progress() as progress:
        listed = progress.add_task("publishing listings", total=sizes.listings)
        small = min(SMALL_HISTORY, sizes.listings)
        world_mod.publish(world, small, tick=lambda n: progress.advance(listed, n))
        setup_events = world.events - 2 * small
        from sterling.index import MarketIndex

        small_index = MarketIndex.open(f"sqlite:///{world.home / 'index-small-history.sqlite'}")
        try:
            submission_small = measure_submission(world, counter, small_index)
        finally:
            small_index.close()
        world_mod.publish(world, sizes.listings - small, tick=lambda n: progress.advance(listed, n))
        remaining = max(0, sizes.events - world.events)
        per = world_mod.events_per_pair(world.listings)
        traffic = progress.add_task("job traffic (events)", total=-(-remaining // per) * per)
        pairs = world_mod.traffic(world, remaining, tick=lambda n: progress.advance(traffic, n))
    k = min(world_mod.JOB_LISTINGS, world.listings)
    return {
        "submission_small": submission_small,
        "sources": {
            "setup (deploy, measurement, enclave)": setup_events,
            "publish: BudgetCreated + ListingPublished": 2 * world.listings,
            f"job traffic: {pairs} × (submit_job over {k} listings + cancel_job)": pairs * per,
        },
        "job_pairs": pairs,
        "publish_seconds": round(world.publish_seconds, 1),
        "listings_per_second": round(world.listings / max(world.publish_seconds, 1e-9), 1),
        "manifest_seconds": round(world.manifest_seconds, 1),
        "traffic_seconds": round(world.traffic_seconds, 1),
        "traffic_events_per_second": round(pairs * per / max(world.traffic_seconds, 1e-9), 1),
    }


def _run(world: Any, sizes: Sizes) -> dict[str, Any]:
    counter = CallCounter(world.chain)
    generated = _generate(world, sizes, counter)
    err.print(f"[bold]indexing[/] {world.events} events …")
    idx, index = serving.index_sync(world)
    total = world.market.listing_count()
    err.print("[bold]measuring[/] the indexed pages, the direct read, a submission …")
    indexed = serving.measure_index_queries(idx, total)
    served = serving.serve(world, idx)
    try:
        http = serving.measure_http(served, total)
    finally:
        served.close()
    direct = measure_direct(world, counter, SAMPLE)
    submission_large = measure_submission(world, counter, idx)
    from sterling.index import ListingQuery

    idx_first = idx.listings(ListingQuery(sort="id", descending=True, page=1, per_page=PER_PAGE))
    checks = consistency(direct, indexed, http, idx_first)
    http.pop("first_page")
    direct.pop("first_page")
    worst = max(http[k]["p95_ms"] for k in ("first", "search", "deep"))
    small = generated.pop("submission_small")
    return {
        "sizes": {
            "listings": total,
            "events": world.events,
            "events_target": sizes.events,
            "blocks": int(world.chain.w3.eth.block_number),
            "event_sources": generated.pop("sources"),
        },
        "generate": generated,
        "index": {**index, "goal_met": index["events_per_second"] >= GOAL_EVENTS_PER_S},
        "market_page": {
            "per_page": PER_PAGE,
            "search": SEARCH,
            "http": http,
            "index_api": indexed,
            "direct": direct,
            "goal_p95_ms": GOAL_P95_MS,
            "worst_p95_ms": worst,
            "goal_met": worst < GOAL_P95_MS,
            "direct_over_indexed_first_page": round(
                direct["market_page_seconds"] * 1000 / http["first"]["p95_ms"], 1
            ),
        },
        "submission": {
            "small_history": small,
            "large_history": submission_large,
            "large_over_small": {
                path: {
                    "calls": round(submission_large[path]["rpc_calls"] / max(1, small[path]["rpc_calls"]), 2),
                    "time": round(submission_large[path]["ms"] / max(1e-9, small[path]["ms"]), 2),
                }
                for path in ("indexed", "direct")
            },
        },
        "consistency": checks,
    }


def run(quick: bool = False, *, listings: int | None = None, events: int | None = None) -> dict[str, Any]:
    sizes = Sizes(
        listings if listings is not None else QUICK_LISTINGS if quick else FULL_LISTINGS,
        events if events is not None else QUICK_EVENTS if quick else FULL_EVENTS,
    )
    if sizes.listings < 4:
        from sterling.errors import UsageError

        raise UsageError(f"--listings must be at least 4 (a submission reads 4), got {sizes.listings}")
    if sizes.events < 0:
        from sterling.errors import UsageError

        raise UsageError(f"--events must be ≥ 0, got {sizes.events}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sterling-bench-market-") as tmp:
        world = world_mod.start(Settings.from_env().require_anvil(), Path(tmp))
        try:
            result = _run(world, sizes)
        finally:
            world.close()
    result["seconds_total"] = round(time.perf_counter() - started, 1)
    return result


def table(result: dict[str, Any]) -> Table:
    sizes, page, index, sub = result["sizes"], result["market_page"], result["index"], result["submission"]
    t = Table(title=f"market: {sizes['listings']:,} listings, {sizes['events']:,} events, anvil on loopback")
    t.add_column("figure")
    t.add_column("indexed", justify="right")
    t.add_column("direct (chain)", justify="right")
    direct = page["direct"]
    mark = " (extrapolated)" if direct["market_page_extrapolated"] else ""
    t.add_row(
        "market page, first, p95",
        f"{page['http']['first']['p95_ms']} ms",
        f"{direct['market_page_seconds']} s{mark}",
    )
    t.add_row("search p95", f"{page['http']['search']['p95_ms']} ms", "")
    t.add_row("deep page p95", f"{page['http']['deep']['p95_ms']} ms", "")
    t.add_row(
        "per listing (direct)", "", f"{direct['per_listing_ms']} ms, {direct['rpc_calls_per_listing']} calls"
    )
    t.add_row("indexing", f"{index['events_per_second']:,} events/s", "")
    small, large = sub["small_history"], sub["large_history"]
    t.add_row(
        "submission reads, small → large history",
        *(
            f"{small[p]['rpc_calls']} → {large[p]['rpc_calls']} calls, {small[p]['ms']} → {large[p]['ms']} ms"
            for p in ("indexed", "direct")
        ),
    )
    t.add_row("consistent", str(result["consistency"]["all"]), "")
    return t
