"""The sealed-data container: streaming AES-256-GCM in authenticated chunks.

Layout (all integers big-endian)::

    header  = magic "STRLENC\\0" | version u8 | algorithm u8 | chunk_size u32 | salt 32 bytes
    chunk_i = AES-256-GCM(file_key, nonce_i, plaintext_i, aad_i)      (ciphertext ‖ 16-byte tag)

    file_key ‖ nonce_base = HKDF-SHA256(data_key, salt, "sterling.container.v1")   (32 + 12 bytes)
    nonce_i  = nonce_base XOR i                     (i as a 96-bit integer)
    aad_i    = header | i u64 | final u8            (final = 1 on the last chunk only)

Every chunk but the last holds exactly `chunk_size` plaintext bytes; the last
holds 0 to `chunk_size` and carries the final flag, so there is always at
least one chunk. Because the index and the final flag are authenticated,
chunks cannot be reordered, duplicated, dropped or truncated, and bytes after
the final chunk are refused; because the header is in every chunk's
associated data, a changed header fails too. A per-file salt gives each file
its own key and nonces, so one data key may encrypt many files.

Memory stays constant: two chunk buffers, whatever the file's size; bytes
already in memory are sliced without copying.
Decryption writes a chunk's plaintext only after its tag verified, and the
file-level functions write to a temporary name that becomes the destination
only when every chunk (and the final flag) verified: a failed decryption
leaves nothing at the destination.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sterling.errors import IntegrityError, UsageError
from sterling.files import atomic_writer

MAGIC = b"STRLENC\x00"
VERSION = 1
ALG_AES_256_GCM = 1
SALT_BYTES = 32
TAG_BYTES = 16
KEY_BYTES = 32
_HEADER = struct.Struct(">8sBBI32s")
HEADER_BYTES = _HEADER.size
DEFAULT_CHUNK = 1 << 20
MIN_CHUNK = 1 << 10
MAX_CHUNK = 1 << 24
_KDF_INFO = b"sterling.container.v1"


@dataclass(frozen=True)
class Header:
    chunk_size: int
    salt: bytes
    version: int = VERSION
    algorithm: int = ALG_AES_256_GCM

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, self.version, self.algorithm, self.chunk_size, self.salt)

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        if len(raw) < HEADER_BYTES:
            raise IntegrityError(f"not a Sterling container: {len(raw)} bytes is shorter than the header")
        magic, version, algorithm, chunk_size, salt = _HEADER.unpack(raw[:HEADER_BYTES])
        if magic != MAGIC:
            raise IntegrityError("not a Sterling container: bad magic")
        if version != VERSION:
            raise IntegrityError(f"unsupported container version {version} (this Sterling reads {VERSION})")
        if algorithm != ALG_AES_256_GCM:
            raise IntegrityError(f"unsupported container algorithm {algorithm}")
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise IntegrityError(f"container chunk size {chunk_size} out of range")
        return cls(chunk_size=chunk_size, salt=salt, version=version, algorithm=algorithm)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise UsageError("a data key is 32 bytes (AES-256)")


def _check_chunk(chunk_size: int) -> None:
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"chunk size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes, got {chunk_size}")


class _Keys:
    """The per-file AEAD and nonce schedule derived from the data key and salt."""

    def __init__(self, key: bytes, header: Header) -> None:
        okm = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES + 12, salt=header.salt, info=_KDF_INFO).derive(
            bytes(key)
        )
        self.aead = AESGCM(okm[:KEY_BYTES])
        self._nonce_base = int.from_bytes(okm[KEY_BYTES:], "big")
        self._header = header.pack()

    def nonce(self, index: int) -> bytes:
        return (self._nonce_base ^ index).to_bytes(12, "big")

    def aad(self, index: int, final: bool) -> bytes:
        return self._header + struct.pack(">QB", index, 1 if final else 0)


def _read_full(src: BinaryIO, buf: memoryview) -> int:
    """Fill `buf` from `src` as far as the stream allows; returns the count read."""
    got = 0
    while got < len(buf):
        n = src.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


Source = BinaryIO | bytes | bytearray | memoryview


def _frames(src: Source, size: int) -> Iterator[tuple[memoryview, bool]]:
    """Consecutive `size`-byte frames of `src` (the last may be shorter), each with a final flag.

    Bytes already in memory are sliced without copying. A stream is read into
    two reused buffers, one frame ahead so that the last frame is known; memory
    stays at two frames whatever the stream's length.
    """
    if isinstance(src, bytes | bytearray | memoryview):
        view = memoryview(src)
        offset = 0
        while True:
            frame = view[offset : offset + size]
            offset += len(frame)
            yield frame, offset >= len(view)
            if offset >= len(view):
                return
    cur, nxt = memoryview(bytearray(size)), memoryview(bytearray(size))
    n = _read_full(src, cur)
    while True:
        m = _read_full(src, nxt) if n == size else 0
        yield cur[:n], m == 0
        if m == 0:
            return
        cur, nxt, n = nxt, cur, m


def encrypt_stream(src: Source, dst: BinaryIO, key: bytes, *, chunk_size: int = DEFAULT_CHUNK) -> int:
    """Encrypt all of `src` (a stream, or bytes in memory) into `dst`; returns the plaintext length."""
    _check_key(key)
    _check_chunk(chunk_size)
    header = Header(chunk_size=chunk_size, salt=os.urandom(SALT_BYTES))
    keys = _Keys(key, header)
    dst.write(header.pack())
    out = memoryview(bytearray(chunk_size + TAG_BYTES))
    total = 0
    for index, (plain, final) in enumerate(_frames(src, chunk_size)):
        n = len(plain)
        keys.aead.encrypt_into(keys.nonce(index), plain, keys.aad(index, final), out[: n + TAG_BYTES])
        dst.write(out[: n + TAG_BYTES])
        total += n
    return total


def decrypt_stream(src: Source, dst: BinaryIO, key: bytes) -> int:
    """Decrypt `src` into `dst`, writing each chunk only after its tag verified.

    Raises `IntegrityError` on any tampering. On failure `dst` may hold the
    verified chunks before the bad one: callers that must expose nothing use
    `decrypt_file` or `decrypt_bytes`, which publish only a fully verified result.
    """
    _check_key(key)
    if isinstance(src, bytes | bytearray | memoryview):
        header = Header.parse(bytes(src[:HEADER_BYTES]))
        src = memoryview(src)[HEADER_BYTES:]
    else:
        header = Header.parse(src.read(HEADER_BYTES))
    keys = _Keys(key, header)
    plain = memoryview(bytearray(header.chunk_size))
    total = 0
    for index, (sealed, final) in enumerate(_frames(src, header.chunk_size + TAG_BYTES)):
        n = len(sealed) - TAG_BYTES
        if n < 0:
            raise IntegrityError(f"container truncated in chunk {index}")
        try:
            keys.aead.decrypt_into(keys.nonce(index), sealed, keys.aad(index, final), plain[:n])
        except InvalidTag:
            raise IntegrityError(
                f"chunk {index} failed authentication (tampered, truncated, reordered, or the wrong key)"
            ) from None
        dst.write(plain[:n])
        total += n
    return total


def encrypt_bytes(plaintext: bytes, key: bytes, *, chunk_size: int = DEFAULT_CHUNK) -> bytes:
    out = io.BytesIO()
    encrypt_stream(plaintext, out, key, chunk_size=chunk_size)
    return out.getvalue()


def decrypt_bytes(ciphertext: bytes, key: bytes) -> bytes:
    """All the plaintext, returned only once every chunk verified."""
    out = io.BytesIO()
    decrypt_stream(ciphertext, out, key)
    return out.getvalue()


def encrypt_file(src: Path, dst: Path, key: bytes, *, chunk_size: int = DEFAULT_CHUNK) -> int:
    """Encrypt `src` to `dst` atomically; returns the plaintext length."""
    with open(src, "rb") as fin, atomic_writer(dst) as fout:
        return encrypt_stream(fin, fout, key, chunk_size=chunk_size)


def decrypt_file(src: Path, dst: Path, key: bytes) -> int:
    """Decrypt `src` to `dst`; on any failure nothing appears at `dst`."""
    with open(src, "rb") as fin, atomic_writer(dst) as fout:
        return decrypt_stream(fin, fout, key)


def ciphertext_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    """The container's size for a plaintext of `plaintext_size` bytes."""
    chunks = max(1, -(-plaintext_size // chunk_size))
    return HEADER_BYTES + plaintext_size + chunks * TAG_BYTES
