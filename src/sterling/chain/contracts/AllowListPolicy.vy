# pragma version ~=0.4.3
"""
@title Sterling allow-list policy
@notice A listing policy that lets only consumers its owner has allowed
        use the listing; they pay the listing's public price.
"""

from . import IPolicy
from . import IMarketplace

implements: IPolicy

event ConsumerAllowed:
    consumer: indexed(address)
    allowed: bool

owner: public(address)
marketplace: public(IMarketplace)
allowed: public(HashMap[address, bool])


@deploy
def __init__(marketplace: address):
    """
    @param marketplace The Marketplace whose list prices this policy charges.
    """
    assert marketplace.is_contract, "allowlist: marketplace is not a contract"
    self.owner = msg.sender
    self.marketplace = IMarketplace(marketplace)


@external
def set_allowed(consumer: address, allowed: bool):
    """
    @notice Allow or disallow `consumer`. Only the owner.
    """
    assert msg.sender == self.owner, "allowlist: caller is not the owner"
    self.allowed[consumer] = allowed
    log ConsumerAllowed(consumer=consumer, allowed=allowed)


@view
@external
def check(consumer: address, listing_id: uint256, job_hash: bytes32) -> bool:
    """
    @notice True when `consumer` is on the allow-list.
    """
    return self.allowed[consumer]


@view
@external
def price(consumer: address, listing_id: uint256, eps: uint256) -> uint256:
    """
    @notice The listing's public price.
    """
    return staticcall self.marketplace.list_price(listing_id, eps)
