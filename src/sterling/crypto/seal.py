"""Sealing small secrets (data keys, job bodies, model keys) to an X25519 key with HPKE.

RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM,
from `cryptography`'s own `hpke` module. The `info` string binds every sealed
value to where it may be used: its purpose, the chain id, the Marketplace
address and a subject (the ciphertext hash and its provider for a data key,
the job for a job body or model key). A sealed key copied to another listing,
provider, chain or job does not open.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sterling.errors import IntegrityError, UsageError

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
PURPOSES = ("data-key", "job-body", "model-key")


@dataclass(frozen=True)
class Binding:
    """Where a sealed value may be opened: purpose, chain, Marketplace, subject."""

    purpose: str
    chain_id: int
    marketplace: str
    subject: bytes

    def info(self) -> bytes:
        if self.purpose not in PURPOSES:
            raise UsageError(f"unknown sealing purpose {self.purpose!r}; one of {', '.join(PURPOSES)}")
        market = bytes.fromhex(self.marketplace.removeprefix("0x").lower())
        if len(market) != 20:
            raise UsageError(f"marketplace must be a 20-byte address, got {self.marketplace!r}")
        return b"|".join(
            [
                b"sterling.seal.v1",
                self.purpose.encode(),
                self.chain_id.to_bytes(32, "big"),
                market,
                self.subject,
            ]
        )


def public_bytes(key: X25519PublicKey | X25519PrivateKey) -> bytes:
    """The raw 32-byte X25519 public key (as stored on chain)."""
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_public(raw: bytes) -> X25519PublicKey:
    if len(raw) != 32:
        raise UsageError(f"an X25519 public key is 32 bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def seal(secret: bytes, recipient: X25519PublicKey | bytes, binding: Binding) -> bytes:
    """HPKE-seal `secret` to `recipient`; returns enc ‖ ciphertext (80 bytes for a 32-byte key)."""
    pub = load_public(recipient) if isinstance(recipient, bytes) else recipient
    return SUITE.encrypt(secret, pub, info=binding.info())


def unseal(sealed: bytes, private_key: X25519PrivateKey, binding: Binding) -> bytes:
    """Open a sealed value; `IntegrityError` if it was sealed for another key or binding."""
    try:
        return SUITE.decrypt(sealed, private_key, info=binding.info())
    except (InvalidTag, ValueError):
        raise IntegrityError(
            f"sealed {binding.purpose} does not open here: wrong key, or bound to another "
            "chain, Marketplace or subject, or tampered"
        ) from None


def data_key_binding(chain_id: int, marketplace: str, data_hash: bytes, *, provider: str) -> Binding:
    """A data key opens only for its ciphertext, listed by its provider, on this chain and Marketplace.

    The provider is bound because a publish transaction is public before it is mined: without it,
    anyone could copy the ciphertext hash and sealed key into their own listing, mined first, and be
    paid for the provider's data.
    """
    owner = bytes.fromhex(provider.removeprefix("0x"))
    if len(owner) != 20:
        raise UsageError(f"provider must be a 20-byte address, got {provider!r}")
    return Binding("data-key", chain_id, marketplace, data_hash + owner)


def job_body_binding(chain_id: int, marketplace: str, *, consumer: str, consumer_key: bytes) -> Binding:
    """A job body opens only for the consumer who submitted it, with the model key they gave."""
    return Binding(
        "job-body", chain_id, marketplace, bytes.fromhex(consumer.removeprefix("0x")) + consumer_key
    )


def model_key_binding(chain_id: int, marketplace: str, *, job_id: int, result_hash: bytes) -> Binding:
    """A model key opens only for this job's result."""
    return Binding("model-key", chain_id, marketplace, job_id.to_bytes(32, "big") + result_hash)
