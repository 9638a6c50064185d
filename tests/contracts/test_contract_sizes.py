"""Every deployed contract's runtime stays at least 10% under EIP-170's limit, so features fit later."""

from __future__ import annotations

import pytest

from sterling.chain import artifacts

EIP170 = 24_576
HEADROOM = 0.9


@pytest.mark.parametrize("name", artifacts.CONTRACTS)
def test_runtime_leaves_ten_percent_of_eip170(name: str) -> None:
    runtime = bytes.fromhex(artifacts.load(name).bytecode_runtime.removeprefix("0x"))
    assert len(runtime) <= int(HEADROOM * EIP170), f"{name}: {len(runtime):,} bytes"
