"""Keys on disk, always encrypted with a passphrase.

Every secret key (a participant's Ethereum key, an X25519 key that sealed
values are addressed to, a data key) is kept in the standard Ethereum
keystore format (version 3, scrypt), which encrypts any 32-byte secret.
Sterling adds a ``sterling_kind`` field saying what the secret is and, for
X25519 keys, the public key; it drops the meaningless address field for
non-Ethereum secrets. Files are written atomically with mode 0600. Secrets
are never printed, logged or put in an error message.

An `Identity` is what a participant holds: an Ethereum account (to transact
and sign) and an X25519 key (to receive sealed model keys or data keys).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keyfile.keyfile import create_keyfile_json, decode_keyfile_json

from sterling.crypto.seal import public_bytes
from sterling.errors import KeyStoreError, UsageError
from sterling.files import atomic_write

KINDS = ("ethereum", "x25519", "data-key")
#: scrypt work factor of the standard keystore; tests may lower it.
DEFAULT_SCRYPT_N = 1 << 18


def save_secret(
    path: Path,
    secret: bytes,
    passphrase: str,
    *,
    kind: str,
    scrypt_n: int = DEFAULT_SCRYPT_N,
    overwrite: bool = False,
) -> None:
    """Encrypt a 32-byte `secret` with `passphrase` into a keystore file at `path`."""
    if kind not in KINDS:
        raise UsageError(f"unknown key kind {kind!r}; one of {', '.join(KINDS)}")
    if len(secret) != 32:
        raise UsageError("a keystore holds a 32-byte secret")
    if not passphrase:
        raise UsageError("an empty passphrase protects nothing: choose one")
    if path.exists() and not overwrite:
        raise KeyStoreError(f"{path} exists; refusing to overwrite a key")
    doc: dict[str, Any] = create_keyfile_json(secret, passphrase.encode(), kdf="scrypt", iterations=scrypt_n)
    doc["sterling_kind"] = kind
    if kind != "ethereum":
        doc.pop("address", None)
    if kind == "x25519":
        doc["x25519_public_key"] = public_bytes(X25519PrivateKey.from_private_bytes(secret)).hex()
    atomic_write(path, json.dumps(doc, indent=1).encode(), mode=0o600)


def read_header(path: Path) -> dict[str, Any]:
    """The keystore's public fields (kind, address or public key), without the passphrase."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeyStoreError(f"no key file at {path}") from None
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"{path} is not a keystore file ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or "crypto" not in doc:
        raise KeyStoreError(f"{path} is not a keystore file (no crypto section)")
    return {k: v for k, v in doc.items() if k != "crypto"}


def load_secret(path: Path, passphrase: str, *, kind: str) -> bytes:
    """Decrypt the keystore at `path`; refuse a file of another kind or a wrong passphrase."""
    header = read_header(path)
    found = header.get("sterling_kind", "ethereum")
    if found != kind:
        raise KeyStoreError(f"{path} holds a {found} key, not a {kind} key")
    doc = json.loads(path.read_text())
    try:
        return bytes(decode_keyfile_json(doc, passphrase.encode()))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise KeyStoreError(f"wrong passphrase for {path}") from None
        raise KeyStoreError(f"{path} is a damaged keystore ({type(exc).__name__})") from None


@dataclass(frozen=True)
class Identity:
    """A participant's keys: an Ethereum account and an X25519 key."""

    name: str
    account: LocalAccount
    x25519: X25519PrivateKey

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def x25519_public(self) -> bytes:
        return public_bytes(self.x25519)

    def __repr__(self) -> str:  # never show key material
        return f"Identity(name={self.name!r}, address={self.address}, x25519=0x{self.x25519_public.hex()})"

    @staticmethod
    def paths(directory: Path, name: str) -> tuple[Path, Path]:
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise UsageError(f"identity name {name!r}: use letters, digits, '-', '_' or '.'")
        return directory / f"{name}.eth.json", directory / f"{name}.x25519.json"

    @classmethod
    def create(
        cls,
        directory: Path,
        name: str,
        passphrase: str,
        *,
        eth_key: bytes | None = None,
        scrypt_n: int = DEFAULT_SCRYPT_N,
    ) -> Identity:
        """Make (or import, with `eth_key`) an identity and store it encrypted."""
        eth_path, x_path = cls.paths(directory, name)
        if eth_path.exists() or x_path.exists():
            raise KeyStoreError(f"identity {name!r} already exists in {directory}")
        account: LocalAccount = Account.from_key(eth_key) if eth_key else Account.create()
        x = X25519PrivateKey.generate()
        x_raw = x.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        save_secret(eth_path, bytes(account.key), passphrase, kind="ethereum", scrypt_n=scrypt_n)
        try:
            save_secret(x_path, x_raw, passphrase, kind="x25519", scrypt_n=scrypt_n)
        except Exception:
            eth_path.unlink(missing_ok=True)  # nothing half-written
            raise
        return cls(name, account, x)

    @classmethod
    def load(cls, directory: Path, name: str, passphrase: str) -> Identity:
        eth_path, x_path = cls.paths(directory, name)
        if not eth_path.exists():
            raise KeyStoreError(
                f"no identity {name!r} in {directory} (create it with `sterling keys new {name}`)"
            )
        account: LocalAccount = Account.from_key(load_secret(eth_path, passphrase, kind="ethereum"))
        x = X25519PrivateKey.from_private_bytes(load_secret(x_path, passphrase, kind="x25519"))
        return cls(name, account, x)


def derived_x25519(account: LocalAccount) -> X25519PrivateKey:
    """An X25519 key derived from an Ethereum key, for a local chain's development accounts only.

    Identities (`sterling keys new`) hold an independent X25519 key; a dev account has
    none, so one is derived (HKDF-SHA256) to let the well-known test accounts receive models.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = HKDF(hashes.SHA256(), 32, salt=None, info=b"sterling.dev-account-x25519.v1").derive(
        bytes(account.key)
    )
    return X25519PrivateKey.from_private_bytes(raw)
