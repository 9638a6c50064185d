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
already in memory are sliced without copying. `ChunkReader` reads any byte range
of a sealed file at random, verifying each chunk it touches, and
`ContainerWriter` seals what a producer writes, chunk by chunk.
Decryption writes a chunk's plaintext only after its tag verified, and the
file-level functions write to a temporary name that becomes the destination
only when every chunk (and the final flag) verified: a failed decryption
leaves nothing at the destination.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
#: For datasets, which the enclave may read by row (docs/streaming.md): a sampled row costs the
#: decryption of its chunk, so 16 KiB keeps a streamed epoch near 7x the data for 28x28x3 images
#: (1 MiB: about 450x), for a tag of 16 bytes in 16 KiB (0.1%).
ROW_CHUNK = 16 << 10
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


# ------------------------------------------------------------ random access and streamed writing


class ChunkReader:
    """Random access to the plaintext of a sealed container in a seekable file.

    The file's size fixes the number of chunks, hence which one must carry the final flag: each
    chunk is verified with its own index and that flag before any of its bytes are returned, so
    a chunk moved, duplicated, altered or cut off fails wherever it is read. The last chunk is
    verified on opening, so a truncated file is refused at once. Decrypted chunks are kept in a
    bounded LRU (`cache_chunks`): memory stays at that many chunks whatever the file's size.
    """

    def __init__(self, file: BinaryIO, key: bytes, *, cache_chunks: int = 16) -> None:
        _check_key(key)
        if cache_chunks < 1:
            raise UsageError("a chunk reader caches at least one chunk")
        self._file = file
        self._lock = threading.Lock()
        try:  # a real file is read with pread: no seek, no buffer to refill for a random read
            self._fd: int | None = file.fileno()
        except (AttributeError, OSError):
            self._fd = None
        file.seek(0, io.SEEK_END)
        size = file.tell()
        file.seek(0)
        self.header = Header.parse(file.read(HEADER_BYTES))
        self._keys = _Keys(key, self.header)
        self._frame = self.header.chunk_size + TAG_BYTES
        body = size - HEADER_BYTES
        if body < TAG_BYTES:
            raise IntegrityError("container truncated: no chunk after the header")
        self.chunks = -(-body // self._frame)
        last = body - (self.chunks - 1) * self._frame
        if last < TAG_BYTES:
            raise IntegrityError(f"container truncated in chunk {self.chunks - 1}")
        #: The plaintext's length.
        self.size = (self.chunks - 1) * self.header.chunk_size + last - TAG_BYTES
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._capacity = cache_chunks
        #: Chunks decrypted so far (a cache miss each), for tests and benchmarks.
        self.decrypted = 0
        self.chunk(self.chunks - 1)

    def chunk(self, index: int) -> bytes:
        """The verified plaintext of chunk `index`."""
        if not 0 <= index < self.chunks:
            raise UsageError(f"chunk {index} is outside the container's {self.chunks} chunks")
        with self._lock:
            hit = self._cache.get(index)
            if hit is not None:
                self._cache.move_to_end(index)
                return hit
            offset = HEADER_BYTES + index * self._frame
            if self._fd is not None:
                sealed = os.pread(self._fd, self._frame, offset)
            else:
                self._file.seek(offset)
                sealed = self._file.read(self._frame)
            final = index == self.chunks - 1
            try:
                plain = self._keys.aead.decrypt(self._keys.nonce(index), sealed, self._keys.aad(index, final))
            except InvalidTag:
                raise IntegrityError(
                    f"chunk {index} failed authentication (tampered, truncated, reordered, or the wrong key)"
                ) from None
            self.decrypted += 1
            self._cache[index] = plain
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
            return plain

    def read(self, offset: int, n: int) -> bytes:
        """`n` plaintext bytes from `offset` (fewer only at the end of the plaintext)."""
        if offset < 0 or n < 0:
            raise UsageError("a read needs a non-negative offset and length")
        end = min(self.size, offset + n)
        size = self.header.chunk_size
        parts = []
        while offset < end:
            index, start = divmod(offset, size)
            take = min(end - offset, size - start)
            parts.append(self.chunk(index)[start : start + take])
            offset += take
        return b"".join(parts)


class PlainView(io.RawIOBase):
    """A read-only, seekable file over a `ChunkReader`'s plaintext (for `zipfile` and npy headers)."""

    def __init__(self, reader: ChunkReader) -> None:
        super().__init__()
        self.reader = reader
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.reader.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the plaintext")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.reader.read(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class ContainerWriter(io.RawIOBase):
    """A writable file that seals what is written into `dst`, chunk by chunk (producers of large data).

    One chunk is held back until more bytes follow it, so the last chunk carries the final flag;
    memory stays at about one chunk plus the caller's largest write. `close()` seals the last
    chunk; a writer abandoned without it leaves a container every reader refuses.
    """

    def __init__(self, dst: BinaryIO, key: bytes, *, chunk_size: int = DEFAULT_CHUNK) -> None:
        super().__init__()
        _check_key(key)
        _check_chunk(chunk_size)
        self.header = Header(chunk_size=chunk_size, salt=os.urandom(SALT_BYTES))
        self._keys = _Keys(key, self.header)
        self._dst = dst
        self._buf = bytearray()
        self._index = 0
        #: Plaintext bytes written so far.
        self.written = 0
        dst.write(self.header.pack())

    def writable(self) -> bool:
        return True

    def _seal(self, plain: bytes | bytearray | memoryview, final: bool) -> None:
        k = self._keys
        self._dst.write(k.aead.encrypt(k.nonce(self._index), plain, k.aad(self._index, final)))
        self._index += 1

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed container writer")
        view = memoryview(data).cast("B")
        self._buf += view
        self.written += len(view)
        size = self.header.chunk_size
        if len(self._buf) > size:
            whole = (len(self._buf) - 1) // size * size  # keep at least one byte back: it may be last
            for start in range(0, whole, size):
                self._seal(self._buf[start : start + size], False)
            del self._buf[:whole]
        return len(view)

    def close(self) -> None:
        if not self.closed:
            self._seal(self._buf, True)
            self._buf = bytearray()
        super().close()
