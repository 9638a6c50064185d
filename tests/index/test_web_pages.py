"""The web API's lists are index pages: the envelope, totals, bounds (422), and fresh data per read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from indexworld import World, manifest

from sterling.index import MAX_PER_PAGE
from sterling.web.context import WebContext

TOKEN = "index-test-token-0123456789"
ORIGIN = "http://127.0.0.1:8000"


@pytest.fixture
def client(world: World, tmp_path: Path, index_url: str) -> Iterator[TestClient]:
    from sterling.web.app import create_app

    context = WebContext(
        market=world.market, store=world.store, state_dir=tmp_path / "state", index_url=index_url
    )
    app = create_app(context, static_dir=tmp_path / "static", token=TOKEN, port=8000)
    with TestClient(app, base_url=ORIGIN) as c:
        assert c.get(f"/?token={TOKEN}").status_code == 200
        yield c


def test_lists_answer_one_page_with_totals(world: World, client: TestClient):
    world.register_enclave()
    for i in range(5):
        world.publish(manifest(f"set {i}", "tabular", ["a", "b"], 10 + i))
    job = world.submit([1, 2], [1.0, 1.0])
    got = client.get("/api/listings", params={"per_page": 2, "page": 3, "order": "desc"}).json()
    assert (got["total"], got["page"], got["per_page"], got["pages"]) == (5, 3, 2, 3)
    assert [item["id"] for item in got["items"]] == [1]
    assert got["items"][0]["name"] == "set 0"
    world.publish(manifest("late", "published after the first read", ["a"], 1))
    assert client.get("/api/listings", params={"q": "late"}).json()["total"] == 1  # synced before the read
    jobs = client.get("/api/jobs").json()
    assert jobs["total"] == 1
    assert jobs["items"][0]["listing_ids"] == [1, 2]
    mine = client.get(f"/api/jobs/{job}/events", params={"per_page": 2}).json()
    assert mine["total"] == len(world.market.job_events(job))
    assert len(mine["items"]) == 2
    assert {e["args"]["job_id"] for e in mine["items"]} == {job}
    events = client.get("/api/explorer/events", params={"kind": "EpsilonReserved", "job": job}).json()
    assert events["total"] == 2
    (enclave,) = client.get("/api/enclaves").json()
    assert enclave["address"] == world.enclave.address
    assert enclave["registered"] is True


@pytest.mark.parametrize(
    "path",
    ["/api/listings", "/api/explorer/events", "/api/jobs", "/api/jobs/1/events"],
)
def test_page_bounds_are_422_naming_the_bound(world: World, client: TestClient, path: str):
    world.publish()
    world.submit([1], [1.0])
    too_big = client.get(path, params={"per_page": MAX_PER_PAGE + 1})
    assert too_big.status_code == 422
    assert (too_big.json()["field"], str(MAX_PER_PAGE) in too_big.json()["error"]) == ("per_page", True)
    too_small = client.get(path, params={"page": 0})
    assert (too_small.status_code, too_small.json()["field"]) == (422, "page")
    assert client.get(path, params={"per_page": MAX_PER_PAGE}).status_code == 200
    assert client.get("/api/enclaves", params={"limit": MAX_PER_PAGE + 1}).status_code == 422


def test_unknown_job_events_are_404(client: TestClient):
    assert client.get("/api/jobs/9/events").status_code == 404
