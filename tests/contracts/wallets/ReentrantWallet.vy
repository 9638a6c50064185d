# pragma version ~=0.4.3
"""
@title A test wallet that tries to withdraw again while it is being paid
"""

WITHDRAW: constant(Bytes[4]) = method_id("withdraw()")

received: public(uint256)
receipts: public(uint256)
reentry_succeeded: public(bool)
reentry_tried: public(bool)


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
    if msg.sender.is_contract and not self.reentry_tried:
        self.reentry_tried = True
        self.reentry_succeeded = raw_call(msg.sender, WITHDRAW, revert_on_failure=False)
