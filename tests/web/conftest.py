"""Fixtures for the API tests: a real market on py-evm with a SimulatedTee worker, and the app over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from webworld import Site, make_world, serve, tabular


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    world = make_world(tmp_path)
    with serve(world, tmp_path / "static") as site:
        yield site
    world.chain.close()


@pytest.fixture
def listed(site: Site) -> tuple[int, int]:
    """Two listings of the same two-class tabular task, by two providers with different prices."""
    a = site.world.list_data(tabular(400, 1), provider=0)
    b = site.world.list_data(tabular(300, 2), provider=1, price_per_job=2 * 10**15, cap=1.5)
    return a, b
