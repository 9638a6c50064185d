# pragma version ~=0.4.3
"""
@title A test wallet that writes storage when it receives ether
@notice Like a Safe's implementation: `execute` makes any call, and
        receiving ether costs far more than the 2,300 gas `send` forwards.
        Its first slot is the proxy's implementation slot, as in a Safe, so
        it also runs behind SafeProxy.vy.
"""

singleton: address
received: public(uint256)
receipts: public(uint256)


@external
@payable
def execute(target: address, data: Bytes[4096], amount: uint256) -> Bytes[4096]:
    """
    @notice Call `target` with `data` and `amount` wei; revert with its reason if it reverts.
    """
    return raw_call(target, data, value=amount, max_outsize=4096)


@external
@payable
def __default__():
    self.received += msg.value
    self.receipts += 1
