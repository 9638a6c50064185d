from eth_abi.abi import encode

from sterling.chain.tx import ERROR_STRING_SELECTOR, PANIC_SELECTOR, decode_revert
from sterling.errors import (
    ChainError,
    ChainUnavailable,
    ConfigError,
    ContractRevert,
    DeploymentNotFound,
    NotFound,
    SterlingError,
    UsageError,
)


def test_every_error_is_a_sterling_error_with_its_own_exit_code():
    classes = [
        UsageError,
        ConfigError,
        ChainError,
        ChainUnavailable,
        DeploymentNotFound,
        ContractRevert,
        NotFound,
    ]
    for cls in classes:
        assert issubclass(cls, SterlingError)
    assert issubclass(UsageError, ValueError)
    assert issubclass(ChainUnavailable, ConnectionError)
    assert UsageError.exit_code != ChainError.exit_code != SterlingError.exit_code


def test_contract_revert_carries_the_reason():
    err = ContractRevert("marketplace: budget exhausted", function="submit_job", tx_hash="0xab")
    assert err.reason == "marketplace: budget exhausted"
    assert str(err) == "submit_job: reverted: marketplace: budget exhausted"


def test_decode_revert_reads_error_string_and_panic():
    data = ERROR_STRING_SELECTOR + encode(["string"], ["marketplace: zero lease"])
    assert decode_revert(data) == "marketplace: zero lease"
    assert decode_revert("0x" + data.hex()) == "marketplace: zero lease"
    assert decode_revert(PANIC_SELECTOR + encode(["uint256"], [0x11])) == "panic 0x11"
    assert decode_revert(b"", "fallback") == "fallback"
    assert decode_revert(b"\x01\x02\x03\x04", "") == "reverted with data 0x01020304"
