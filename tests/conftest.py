"""Fixtures shared by every test: seeds, and chains that start and clean up themselves."""

from __future__ import annotations

import random

import pytest

from sterling.config import Settings


@pytest.fixture
def seed() -> int:
    """One fixed seed per test, so a failure reproduces."""
    random.seed(1234)
    return 1234


@pytest.fixture(scope="session")
def anvil_binary():  # type: ignore[no-untyped-def]
    anvil = Settings.from_env().anvil
    if anvil is None:
        pytest.fail("anvil is missing: `make test` installs it into node_modules")
    return anvil
