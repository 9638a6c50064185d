# pragma version ~=0.4.3
"""
@title Sterling credential policy
@notice A credential registry and listing policy in one: an issuer (for
        example a hospital) grants credentials to consumers, and consumers
        holding a valid one use the listing for free. Everyone else may use
        it too, at the listing's public price.
"""

from . import IPolicy
from . import IMarketplace

implements: IPolicy

event CredentialGranted:
    holder: indexed(address)
    expires: uint256

event CredentialRevoked:
    holder: indexed(address)

issuer: public(address)
marketplace: public(IMarketplace)
# Unix time at which a holder's credential expires; 0: none.
expires: public(HashMap[address, uint256])


@deploy
def __init__(marketplace: address, issuer: address):
    """
    @param marketplace The Marketplace whose list prices non-holders pay.
    @param issuer The account that grants and revokes credentials.
    """
    assert marketplace.is_contract, "credential: marketplace is not a contract"
    assert issuer != empty(address), "credential: empty issuer"
    self.marketplace = IMarketplace(marketplace)
    self.issuer = issuer


@external
def grant(holder: address, expires: uint256):
    """
    @notice Grant `holder` a credential valid until `expires` (unix seconds). Only the issuer.
    """
    assert msg.sender == self.issuer, "credential: caller is not the issuer"
    assert expires > block.timestamp, "credential: expiry in the past"
    self.expires[holder] = expires
    log CredentialGranted(holder=holder, expires=expires)


@external
def revoke(holder: address):
    """
    @notice Revoke `holder`'s credential. Only the issuer.
    """
    assert msg.sender == self.issuer, "credential: caller is not the issuer"
    assert self.expires[holder] != 0, "credential: holder has no credential"
    self.expires[holder] = 0
    log CredentialRevoked(holder=holder)


@view
@internal
def _holds(holder: address) -> bool:
    return self.expires[holder] > block.timestamp


@view
@external
def holds(holder: address) -> bool:
    """
    @notice True when `holder` has a credential that has not expired.
    """
    return self._holds(holder)


@view
@external
def check(consumer: address, listing_id: uint256, job_hash: bytes32) -> bool:
    """
    @notice Everyone may use the listing; the credential only changes the price.
    """
    return True


@view
@external
def price(consumer: address, listing_id: uint256, eps: uint256) -> uint256:
    """
    @notice Zero for credential holders, the public price for everyone else.
    """
    if self._holds(consumer):
        return 0
    return staticcall self.marketplace.list_price(listing_id, eps)
