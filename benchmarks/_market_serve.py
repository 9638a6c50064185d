"""The indexed side of `sterling bench market`: the index's sync, its queries, and the web app
served on loopback (uvicorn, the real guard and token), each timed."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from typing import Any

from sterling.errors import SterlingError

REPEATS = 40  # requests per page kind for the percentiles
PER_PAGE = 50
SEARCH = "fundus"
GOAL_EVENTS_PER_S = 2_000.0


def percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2), "n": len(ordered)}


# ------------------------------------------------------------------ the index and the web API


def index_sync(world: Any) -> tuple[Any, dict[str, Any]]:
    """Index the whole history into a fresh SQLite file. A sync reads at most a batch of new
    manifests (the rest wait for the next), so it syncs again until every manifest is read: the
    throughput counts the time until every listing is searchable."""
    from sterling.index import MarketIndex

    idx = MarketIndex.open(None, home=world.home)
    started = time.perf_counter()
    report = idx.sync(world.market)
    events_only = time.perf_counter() - started
    syncs, manifests = 1, report.manifests_read
    last = report
    while last.manifests_read > 0:
        last = idx.sync(world.market)
        syncs, manifests = syncs + 1, manifests + last.manifests_read
    wall = time.perf_counter() - started
    again = time.perf_counter()
    idx.sync(world.market)
    resync = time.perf_counter() - again
    return idx, {
        "backend": "sqlite",
        "events": report.events,
        "blocks": report.to_block - report.from_block + 1,
        "manifests_read": manifests,
        "syncs": syncs,
        "first_sync_seconds": round(events_only, 2),
        "seconds": round(wall, 2),
        "events_per_second": round(report.events / max(wall, 1e-9), 1),
        "first_sync_events_per_second": round(report.events / max(events_only, 1e-9), 1),
        "resync_seconds": round(resync, 3),
        "goal_events_per_second": GOAL_EVENTS_PER_S,
    }


def page_queries(total: int) -> dict[str, dict[str, Any]]:
    """The three page kinds, as query parameters of GET /api/listings."""
    pages = max(1, -(-total // PER_PAGE))
    deep = max(1, pages // 2)
    base = {"sort": "id", "order": "desc", "per_page": PER_PAGE}
    return {
        "first": {**base, "page": 1},
        "search": {**base, "page": 1, "q": SEARCH},
        "deep": {**base, "page": deep},
    }


def measure_index_queries(idx: Any, total: int) -> dict[str, Any]:
    from sterling.index import ListingQuery

    out: dict[str, Any] = {}
    for kind, params in page_queries(total).items():
        query = ListingQuery(
            q=str(params.get("q", "")), sort="id", descending=True, page=params["page"], per_page=PER_PAGE
        )
        ms = []
        page = None
        for _ in range(REPEATS):
            started = time.perf_counter()
            page = idx.listings(query)
            ms.append((time.perf_counter() - started) * 1000)
        assert page is not None
        out[kind] = {**percentiles(ms), "total": page.total, "page": page.page, "items": len(page.items)}
    return out


class Served:
    """The web app over `world` and its index, served by uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, app: Any, port: int, token: str) -> None:
        import uvicorn

        self.port, self.token = port, token
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise SterlingError("the web app did not start")
            time.sleep(0.05)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str, params: dict[str, Any]) -> Any:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        self.conn.request("GET", f"{path}?{query}", headers={"Authorization": f"token {self.token}"})
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SterlingError(f"GET {path}?{query} answered {response.status}: {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()
        self.server.should_exit = True
        self.thread.join(15)


def serve(world: Any, idx: Any) -> Served:
    from sterling.chain.node import free_port
    from sterling.web.app import create_app
    from sterling.web.context import WebContext

    context = WebContext(market=world.market, store=world.store, state_dir=world.home, index_url=idx.url)
    port = free_port()
    token = "bench-" + "0" * 40
    return Served(create_app(context, token=token, port=port), port, token)


def measure_http(served: Served, total: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cold = time.perf_counter()
    served.get("/api/listings", page_queries(total)["first"])
    out["cold_first_request_ms"] = round((time.perf_counter() - cold) * 1000, 2)
    for kind, params in page_queries(total).items():
        ms = []
        body: dict[str, Any] = {}
        served.get("/api/listings", params)  # warm: this query's plan and pages cached, as in use
        for _ in range(REPEATS):
            started = time.perf_counter()
            body = served.get("/api/listings", params)
            ms.append((time.perf_counter() - started) * 1000)
        out[kind] = {
            **percentiles(ms),
            "total": body["total"],
            "page": body["page"],
            "items": len(body["items"]),
        }
        if kind == "first":
            out["first_page"] = [{"id": i["id"], "name": i["name"]} for i in body["items"]]
    return out
