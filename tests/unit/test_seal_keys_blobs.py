"""HPKE sealing bound to its use, signatures, passphrase keystores, and content-addressed blobs."""

from __future__ import annotations

import io
import os
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from sterling.crypto import keys, seal, signing
from sterling.errors import IntegrityError, KeyStoreError, NotFound, UsageError
from sterling.storage.blobs import BlobStore, fetch_verified, parse_address

MARKET = "0x" + "ab" * 20
N = 2**10  # a fast scrypt work factor for tests


def binding(**kw) -> seal.Binding:
    base = {"purpose": "data-key", "chain_id": 31337, "marketplace": MARKET, "subject": b"\x01" * 32}
    return seal.Binding(**{**base, **kw})


# ------------------------------------------------------------------ sealing


def test_seal_round_trip_and_size():
    key = X25519PrivateKey.generate()
    sealed = seal.seal(b"k" * 32, seal.public_bytes(key), binding())
    assert len(sealed) == 80
    assert seal.unseal(sealed, key, binding()) == b"k" * 32


@pytest.mark.parametrize(
    "moved",
    [
        {"purpose": "model-key"},
        {"chain_id": 1},
        {"marketplace": "0x" + "cd" * 20},
        {"subject": b"\x02" * 32},
    ],
)
def test_a_sealed_key_moved_elsewhere_does_not_open(moved):
    key = X25519PrivateKey.generate()
    sealed = seal.seal(b"k" * 32, seal.public_bytes(key), binding())
    with pytest.raises(IntegrityError, match="does not open here"):
        seal.unseal(sealed, key, binding(**moved))


def test_another_recipient_or_a_flipped_bit_does_not_open():
    key = X25519PrivateKey.generate()
    sealed = bytearray(seal.seal(b"k" * 32, seal.public_bytes(key), binding()))
    with pytest.raises(IntegrityError):
        seal.unseal(bytes(sealed), X25519PrivateKey.generate(), binding())
    sealed[40] ^= 1
    with pytest.raises(IntegrityError):
        seal.unseal(bytes(sealed), key, binding())


def test_bad_bindings_are_usage_errors():
    pub = seal.public_bytes(X25519PrivateKey.generate())
    with pytest.raises(UsageError, match="purpose"):
        seal.seal(b"k", pub, binding(purpose="anything"))
    with pytest.raises(UsageError, match="20-byte address"):
        seal.seal(b"k", pub, binding(marketplace="0x1234"))
    with pytest.raises(UsageError, match="32 bytes"):
        seal.seal(b"k", b"short", binding())


# ------------------------------------------------------------------ signatures


def test_sign_recover_verify():
    acct, other = Account.create(), Account.create()
    sig = signing.sign(acct, b"job 7 result")
    assert signing.recover(b"job 7 result", sig) == acct.address
    assert signing.verify(acct.address, b"job 7 result", sig)
    assert not signing.verify(other.address, b"job 7 result", sig)
    assert not signing.verify(acct.address, b"job 8 result", sig)
    assert not signing.verify(acct.address, b"job 7 result", b"\x00" * 10)


# ------------------------------------------------------------------ keystores


@pytest.mark.parametrize("kind", ["ethereum", "x25519", "data-key"])
def test_keystore_round_trip_is_private_and_secret_free(tmp_path, kind):
    secret = os.urandom(32)
    path = tmp_path / "k.json"
    keys.save_secret(path, secret, "pass phrase", kind=kind, scrypt_n=N)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_bytes()
    assert secret.hex().encode() not in text
    assert secret not in text
    assert keys.load_secret(path, "pass phrase", kind=kind) == secret
    assert keys.read_header(path)["sterling_kind"] == kind


def test_keystore_refusals(tmp_path):
    path = tmp_path / "k.json"
    keys.save_secret(path, os.urandom(32), "right", kind="data-key", scrypt_n=N)
    with pytest.raises(KeyStoreError, match="wrong passphrase") as info:
        keys.load_secret(path, "wrong-guess", kind="data-key")
    assert "wrong-guess" not in str(info.value)
    with pytest.raises(KeyStoreError, match="holds a data-key key, not a x25519 key"):
        keys.load_secret(path, "right", kind="x25519")
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        keys.save_secret(path, os.urandom(32), "right", kind="data-key", scrypt_n=N)
    with pytest.raises(UsageError, match="empty passphrase"):
        keys.save_secret(tmp_path / "e.json", os.urandom(32), "", kind="data-key")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(KeyStoreError, match="not a keystore"):
        keys.load_secret(tmp_path / "bad.json", "x", kind="data-key")


def test_identity_round_trip_and_repr_hides_keys(tmp_path):
    ident = keys.Identity.create(tmp_path, "clinic", "pw", scrypt_n=N)
    back = keys.Identity.load(tmp_path, "clinic", "pw")
    assert back.address == ident.address
    assert back.x25519_public == ident.x25519_public
    assert bytes(ident.account.key).hex() not in repr(ident) + str(ident)
    with pytest.raises(KeyStoreError, match="already exists"):
        keys.Identity.create(tmp_path, "clinic", "pw", scrypt_n=N)
    with pytest.raises(UsageError, match="identity name"):
        keys.Identity.create(tmp_path, "../x", "pw", scrypt_n=N)
    with pytest.raises(KeyStoreError, match="no identity"):
        keys.Identity.load(tmp_path, "nobody", "pw")


# ------------------------------------------------------------------ blobs


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "local":
        return BlobStore(tmp_path / "blobs")
    return BlobStore(f"memory://sterling-{uuid.uuid4().hex}")


def test_put_get_by_hex_and_cid(store, tmp_path):
    data = os.urandom(3 * 2**20 + 5)
    ref = store.put_bytes(data)
    assert ref.cid.startswith("bafkrei")
    for address in (ref.hex, "0x" + ref.hex, ref.cid):
        assert store.get_bytes(address) == data
    assert parse_address(ref.cid) == ref.sha256
    assert store.put_bytes(data) == ref  # idempotent
    assert fetch_verified(ref.uri, ref.sha256) == data
    store.get_file(ref.cid, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data
    assert store.fs.ls(f"{store.root}/tmp") == []


def test_corruption_is_detected_and_nothing_written(store, tmp_path):
    ref = store.put_bytes(b"ciphertext" * 1000)
    with store.fs.open(store._path(ref.sha256), "wb") as fh:
        fh.write(b"tampered" * 1000)
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get_bytes(ref.hex)
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get_file(ref.hex, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    with pytest.raises(IntegrityError, match="corrupt"):
        fetch_verified(ref.uri, ref.sha256)


def test_missing_blob_and_bad_address(store):
    with pytest.raises(NotFound):
        store.get_bytes("ab" * 32)
    with pytest.raises(UsageError, match="not a blob address"):
        store.get_bytes("hello")


class _Failing(io.RawIOBase):
    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 2:
            raise OSError("disk went away")
        return os.urandom(1 << 20)


def test_a_failed_put_leaves_no_blob_and_no_temp_file(store):
    with pytest.raises(OSError, match="disk went away"):
        store.put_stream(_Failing())
    leftovers = [p for p in store.fs.find(store.root) if not p.endswith("/")]
    assert leftovers == []
