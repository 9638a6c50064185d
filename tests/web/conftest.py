"""Fixtures for the API tests: a real market on py-evm with a SimulatedTee worker, and the app over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from webworld import Site, make_world, tabular

from sterling.web.app import create_app
from sterling.web.context import WebContext


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    world = make_world(tmp_path)
    context = WebContext(
        market=world.market,
        store=world.store,
        state_dir=world.state,
        poll_seconds=0.05,
        keepalive_seconds=0.2,
    )
    static = tmp_path / "static"
    with TestClient(create_app(context, static_dir=static)) as client:
        yield Site(world, context, client)
    world.chain.close()


@pytest.fixture
def listed(site: Site) -> tuple[int, int]:
    """Two listings of the same two-class tabular task, by two providers with different prices."""
    a = site.world.list_data(tabular(400, 1), provider=0)
    b = site.world.list_data(tabular(300, 2), provider=1, price_per_job=2 * 10**15, cap=1.5)
    return a, b
