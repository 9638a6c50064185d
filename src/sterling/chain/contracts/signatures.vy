# pragma version ~=0.4.3
"""
@title Signature recovery shared by Sterling's contracts
@notice EIP-191 personal-message signatures over a 32-byte digest, as
        eth-account's `sign_message` makes them; malleable signatures
        (s in the upper half of the curve order) are refused.
"""

# Upper half of secp256k1's order: signatures with s above it are malleable.
SECP256K1_HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168  # 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


@internal
@pure
def _recover(digest: bytes32, signature: Bytes[65]) -> address:
    assert len(signature) == 65, "signatures: bad signature length"
    prefixed: bytes32 = keccak256(concat(b"\x19Ethereum Signed Message:\n32", digest))
    r: uint256 = convert(slice(signature, 0, 32), uint256)
    s: uint256 = convert(slice(signature, 32, 32), uint256)
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    if v < 27:
        v += 27
    assert s <= SECP256K1_HALF_N, "signatures: malleable signature"
    signer: address = ecrecover(prefixed, v, r, s)
    assert signer != empty(address), "signatures: invalid signature"
    return signer
