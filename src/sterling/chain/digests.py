"""The digests Sterling's contracts verify, computed off chain, and signing them.

These mirror `EnclaveRegistry.attestation_digest` (which binds the
Marketplace's address), `Marketplace.settlement_digest` and
`PredictionFees.predictions_digest` exactly (a test compares them with the
contract's own views). Signatures are EIP-191 personal-message signatures,
as eth-account's `sign_message` makes and `ecrecover` checks on chain.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_abi.abi import encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

ATTESTATION_TAG = keccak(text="sterling.attestation.v1")
SETTLEMENT_TAG = keccak(text="sterling.settlement.v1")


def report_data(chain_id: int, marketplace: str) -> bytes:
    """What an attestation binds to: this chain and this Marketplace."""
    return keccak(encode(["uint256", "address"], [chain_id, to_checksum_address(marketplace)]))


def attestation_digest(
    *, chain_id: int, marketplace: str, measurement: bytes, enclave: str, hpke_public_key: bytes
) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "address", "bytes32", "bytes32"],
            [
                ATTESTATION_TAG,
                measurement,
                to_checksum_address(enclave),
                hpke_public_key,
                report_data(chain_id, marketplace),
            ],
        )
    )


def settlement_digest(
    *,
    chain_id: int,
    marketplace: str,
    job_id: int,
    result_hash: bytes,
    model_uri: str,
    sealed_model_key: bytes,
    payouts: Sequence[int],
    spent: Sequence[int],
    weights: Sequence[int],
    receipt_hash: bytes,
) -> bytes:
    """What the enclave signs to settle a job; `receipt_hash` is the sha256 of the receipt behind `spent`."""
    return keccak(
        encode(
            [
                "bytes32",
                "uint256",
                "address",
                "uint256",
                "bytes32",
                "bytes32",
                "bytes32",
                "uint256[]",
                "uint256[]",
                "uint256[]",
                "bytes32",
            ],
            [
                SETTLEMENT_TAG,
                chain_id,
                to_checksum_address(marketplace),
                job_id,
                result_hash,
                keccak(text=model_uri),
                keccak(sealed_model_key),
                list(payouts),
                list(spent),
                list(weights),
                receipt_hash,
            ],
        )
    )


def sign_digest(account: LocalAccount, digest: bytes) -> bytes:
    """A 65-byte EIP-191 signature over a 32-byte digest."""
    return bytes(account.sign_message(encode_defunct(primitive=digest)).signature)


def recover_signer(digest: bytes, signature: bytes) -> str:
    return str(Account.recover_message(encode_defunct(primitive=digest), signature=signature))


PREDICTION_TAG = keccak(text="sterling.predictions.v1")


def predictions_digest(
    *,
    chain_id: int,
    fees: str,
    job_id: int,
    payer: str,
    count: int,
    batch_hash: bytes,
    weights: Sequence[int],
) -> bytes:
    """What an enclave signs to attribute a batch of predictions (as `PredictionFees.predictions_digest`)."""
    return keccak(
        encode(
            ["bytes32", "uint256", "address", "uint256", "address", "uint256", "bytes32", "uint256[]"],
            [
                PREDICTION_TAG,
                chain_id,
                to_checksum_address(fees),
                job_id,
                to_checksum_address(payer),
                count,
                batch_hash,
                list(weights),
            ],
        )
    )
