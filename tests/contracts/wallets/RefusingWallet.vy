# pragma version ~=0.4.3
"""
@title A test wallet that refuses ether
"""


@external
@payable
def execute(target: address, data: Bytes[4096], amount: uint256) -> Bytes[4096]:
    """
    @notice Call `target` with `data` and `amount` wei; revert with its reason if it reverts.
    """
    return raw_call(target, data, value=amount, max_outsize=4096)
