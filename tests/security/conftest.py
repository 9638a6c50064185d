"""Markets for the security suite: each test module gets its own, with a real worker already registered."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from attackers import Arena, make_arena

from sterling.chain import node


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """A market on the embedded EVM (py-evm in this process)."""
    chain = node.embedded()
    yield make_arena(chain, tmp_path_factory.mktemp("arena"))
    chain.close()


@pytest.fixture(scope="module", params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def any_arena(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """The same market on the embedded EVM and on an anvil node on loopback."""
    if request.param == "anvil":
        chain = node.start_anvil(request.getfixturevalue("anvil_binary"))
    else:
        chain = node.embedded()
    yield make_arena(chain, tmp_path_factory.mktemp(f"arena-{request.param}"))
    chain.close()
