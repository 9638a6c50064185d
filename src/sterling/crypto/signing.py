"""Signing with the participants' Ethereum keys: the accounts that also transact on chain.

Signatures are EIP-191 personal messages (eth-account's `sign_message`), so a
wallet can make them and a contract can check them with `ecrecover`.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address
from eth_utils.exceptions import ValidationError

from sterling.errors import IntegrityError


def sign(account: LocalAccount, message: bytes) -> bytes:
    """A 65-byte signature by `account` over `message`."""
    return bytes(account.sign_message(encode_defunct(primitive=message)).signature)


def recover(message: bytes, signature: bytes) -> str:
    """The address that signed `message`; `IntegrityError` for a malformed signature."""
    try:
        return str(Account.recover_message(encode_defunct(primitive=message), signature=signature))
    except (ValueError, TypeError, ValidationError, BadSignature) as exc:
        raise IntegrityError(f"malformed signature: {type(exc).__name__}") from None


def verify(address: str, message: bytes, signature: bytes) -> bool:
    """True when `signature` over `message` was made by `address`."""
    try:
        return recover(message, signature) == to_checksum_address(address)
    except IntegrityError:
        return False


def credential_message(consumer: str) -> bytes:
    """What an issuer (e.g. a hospital) signs to vouch for `consumer`; providers' contracts check it."""
    return f"sterling:credential:{consumer.lower()}".encode()


def issue_credential(issuer: LocalAccount, consumer: str) -> str:
    """A credential for `consumer`, signed by `issuer`, as the hex a job carries in `credentials`."""
    return "0x" + sign(issuer, credential_message(to_checksum_address(consumer))).hex()
