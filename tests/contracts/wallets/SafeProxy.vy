# pragma version ~=0.4.3
"""
@title A Safe-like proxy for tests
@notice Every call, including a plain ether transfer, is delegated to the
        implementation (its storage is the proxy's), as a Safe's proxy does.
        It returns nothing: tests read the wallet's state from its storage.
"""

singleton: address


@deploy
def __init__(implementation: address):
    self.singleton = implementation


@external
@payable
def __default__():
    raw_call(self.singleton, msg.data, is_delegate_call=True)
