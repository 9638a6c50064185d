"""`choose_enclave` with an index: candidates from it, the choice still confirmed on the chain."""

from __future__ import annotations

import pytest
from indexworld import MEASUREMENT, World

from sterling.errors import NotFound
from sterling.index import MarketIndex
from sterling.sdk.trust import Trust, UntrustedEnclave, choose_enclave, live_attested


def test_choose_enclave_reads_candidates_from_the_index(world: World, index_url: str):
    world.register_enclave()
    index = MarketIndex.open(index_url)
    trust = Trust.of(MEASUREMENT, world.platform.address)
    chosen = choose_enclave(world.market, trust=trust, index=index)
    assert (chosen.address, chosen.signer) == (world.enclave.address, world.platform.address)
    assert live_attested(world.market, index=index) == live_attested(
        world.market
    )  # same answer as the chain's
    with pytest.raises(UntrustedEnclave, match="only as attested by"):
        choose_enclave(world.market, trust=Trust.of(MEASUREMENT, world.admin.address), index=index)
    world.market.revoke_enclave(world.admin, world.enclave.address)
    with pytest.raises(NotFound, match="no registered enclave"):
        choose_enclave(world.market, trust=trust, index=index)
    index.close()
