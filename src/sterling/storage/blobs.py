"""Content-addressed blobs behind fsspec URLs.

A blob's address is the sha256 of its bytes (shown also as a CIDv1 string,
raw codec, so IPFS tools recognise it). `put` streams the bytes to a
temporary name while hashing and then moves them under their address, so a
crash never leaves half a blob under a valid address; `get` verifies the hash
before returning anything. Storage sees only ciphertext and learns nothing.

Any fsspec URL works as the store's root: a local folder (the default),
``memory://`` for tests, ``s3://bucket/prefix`` with s3fs installed, or an
IPFS gateway through ipfsspec; see docs/storage.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
from multiformats import CID, multihash

from sterling.errors import IntegrityError, NotFound, UsageError
from sterling.files import atomic_writer

READ_CHUNK = 1 << 20


def cid_of(sha256: bytes) -> str:
    """The CIDv1 (raw codec, sha2-256, base32) of a blob with this digest."""
    return str(CID("base32", 1, "raw", multihash.wrap(sha256, "sha2-256")))


def parse_address(address: str) -> bytes:
    """A blob address as its 32-byte digest: hex (with or without 0x) or a CIDv1."""
    text = address.strip()
    is_hex = len(text.removeprefix("0x")) == 64 and all(c in "0123456789abcdefABCDEF" for c in text[-64:])
    try:
        if not is_hex:
            cid = CID.decode(text)
            if cid.hashfun.name != "sha2-256":
                raise UsageError(f"CID {text} does not use sha2-256")
            return bytes(cid.raw_digest)
        raw = bytes.fromhex(text.removeprefix("0x"))
    except (ValueError, KeyError) as exc:
        raise UsageError(f"not a blob address (sha256 hex or CIDv1): {address!r}") from exc
    if len(raw) != 32:
        raise UsageError(f"a blob address is a 32-byte sha256, got {len(raw)} bytes")
    return raw


@dataclass(frozen=True)
class BlobRef:
    sha256: bytes
    size: int
    uri: str

    @property
    def hex(self) -> str:
        return self.sha256.hex()

    @property
    def cid(self) -> str:
        return cid_of(self.sha256)

    def to_json(self) -> dict[str, Any]:
        return {"sha256": "0x" + self.hex, "cid": self.cid, "size": self.size, "uri": self.uri}


class BlobStore:
    """A content-addressed store rooted at an fsspec URL or a local path."""

    def __init__(self, url: str | Path, **storage_options: Any) -> None:
        text = str(url)
        if "://" not in text:
            Path(text).mkdir(parents=True, exist_ok=True)
            text = Path(text).resolve().as_uri()
        self.url = text.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.root = self.root.rstrip("/")

    def _path(self, digest: bytes) -> str:
        h = digest.hex()
        return f"{self.root}/{h[:2]}/{h}"

    def uri(self, digest: bytes) -> str:
        h = digest.hex()
        return f"{self.url}/{h[:2]}/{h}"

    def exists(self, address: str | bytes) -> bool:
        digest = address if isinstance(address, bytes) else parse_address(address)
        return bool(self.fs.exists(self._path(digest)))

    def put_stream(self, src: IO[bytes]) -> BlobRef:
        """Store everything `src` yields; returns its address. Idempotent for equal content."""
        tmp = f"{self.root}/tmp/{os.getpid()}-{os.urandom(8).hex()}"
        self.fs.makedirs(f"{self.root}/tmp", exist_ok=True)
        h = hashlib.sha256()
        size = 0
        try:
            with self.fs.open(tmp, "wb") as out:
                while chunk := src.read(READ_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            digest = h.digest()
            final = self._path(digest)
            if self.fs.exists(final):
                self.fs.rm(tmp)
            else:
                self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
                self.fs.mv(tmp, final)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        return BlobRef(digest, size, self.uri(digest))

    def put_file(self, path: Path) -> BlobRef:
        with open(path, "rb") as fh:
            return self.put_stream(fh)

    def put_bytes(self, data: bytes) -> BlobRef:
        import io

        return self.put_stream(io.BytesIO(data))

    def _chunks(self, digest: bytes) -> Iterator[bytes]:
        path = self._path(digest)
        if not self.fs.exists(path):
            raise NotFound(f"no blob {digest.hex()} in {self.url}")
        with self.fs.open(path, "rb") as fh:
            while chunk := fh.read(READ_CHUNK):
                yield chunk

    def get_bytes(self, address: str | bytes) -> bytes:
        """The blob's bytes, returned only after their sha256 matched the address."""
        digest = address if isinstance(address, bytes) else parse_address(address)
        h = hashlib.sha256()
        parts = []
        for chunk in self._chunks(digest):
            h.update(chunk)
            parts.append(chunk)
        if h.digest() != digest:
            raise IntegrityError(f"blob {digest.hex()} in {self.url} is corrupt: its content hash differs")
        return b"".join(parts)

    def get_file(self, address: str | bytes, dst: Path) -> BlobRef:
        """Copy the blob to `dst`; it appears there only after its hash verified."""
        digest = address if isinstance(address, bytes) else parse_address(address)
        h = hashlib.sha256()
        size = 0
        with atomic_writer(dst) as out:
            for chunk in self._chunks(digest):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
            if h.digest() != digest:
                raise IntegrityError(
                    f"blob {digest.hex()} in {self.url} is corrupt: its content hash differs"
                )
        return BlobRef(digest, size, self.uri(digest))

    def delete(self, address: str | bytes) -> None:
        digest = address if isinstance(address, bytes) else parse_address(address)
        path = self._path(digest)
        if self.fs.exists(path):
            self.fs.rm(path)


def fetch_verified(uri: str, sha256: bytes, **storage_options: Any) -> bytes:
    """Read a blob straight from its URI (as published on chain) and verify its hash."""
    if "://" not in uri:
        raise UsageError(f"a blob URI needs a scheme (file://, memory://, s3://, ...): {uri!r}")
    try:
        with fsspec.open(uri, "rb", **storage_options) as fh:
            data: bytes = fh.read()
    except FileNotFoundError:
        raise NotFound(f"no blob at {uri}") from None
    if hashlib.sha256(data).digest() != sha256:
        raise IntegrityError(f"blob at {uri} is corrupt: its content hash differs from the published one")
    return data


def blob_size(uri: str, **storage_options: Any) -> int | None:
    """The size in bytes of the blob at `uri`, or None when its file system cannot tell."""
    if "://" not in uri:
        raise UsageError(f"a blob URI needs a scheme (file://, memory://, s3://, ...): {uri!r}")
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise NotFound(f"no blob at {uri}") from None
    return None if size is None else int(size)


def fetch_verified_to(uri: str, sha256: bytes, dst: IO[bytes], **storage_options: Any) -> int:
    """Stream the blob at `uri` into `dst` in blocks, hashing as it goes; returns its length.

    Raises `IntegrityError` when the hash differs: `dst` then holds unverified bytes and the
    caller must discard it (a temporary file).
    """
    if "://" not in uri:
        raise UsageError(f"a blob URI needs a scheme (file://, memory://, s3://, ...): {uri!r}")
    digest, total = hashlib.sha256(), 0
    try:
        with fsspec.open(uri, "rb", **storage_options) as fh:
            while block := fh.read(_STREAM_BLOCK):
                digest.update(block)
                dst.write(block)
                total += len(block)
    except FileNotFoundError:
        raise NotFound(f"no blob at {uri}") from None
    if digest.digest() != sha256:
        raise IntegrityError(f"blob at {uri} is corrupt: its content hash differs from the published one")
    dst.flush()
    return total


_STREAM_BLOCK = 1 << 22
