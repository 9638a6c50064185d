"""The sealed-data container's streaming throughput against raw AES-256-GCM.

Run: `sterling bench crypto --format json`.

All three figures come from one run over the same random data in memory
(so the disk is not what is measured), in the container's chunk size:

- raw: `cryptography`'s AESGCM.encrypt_into over each chunk, the limit;
- encrypt: `container.encrypt_stream` over the bytes in memory, chunk by
  chunk (slices, no copy) into a sink: the container's whole per-chunk cost
  (key schedule, nonce, associated data, final-chunk look-ahead, tag);
- decrypt: `container.decrypt_stream` of that ciphertext into a sink;
- stream_*: the same through a file-like reader, where each chunk is first
  copied in with `readinto()` as it is from a file (a copy raw never makes).

`ratio` is the lower of encrypt and decrypt over raw (goal ≥ 0.8);
`stream_ratio` the same for the file-like path.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.table import Table

from sterling.crypto import container

MIB = 1 << 20


class _Sink(io.RawIOBase):
    """A writable stream that keeps nothing, so only the container's own work is timed."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


def _reader(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data), buffer_size=8192)


def _best(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(*, quick: bool = False) -> dict[str, Any]:
    size = (32 if quick else 256) * MIB
    chunk = container.DEFAULT_CHUNK
    repeats = 3 if quick else 5
    data = os.urandom(size)
    key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(key)
    view = memoryview(data)
    out = bytearray(chunk + container.TAG_BYTES)
    aad = bytes(container.HEADER_BYTES + 9)

    def raw() -> None:
        for i, offset in enumerate(range(0, size, chunk)):
            aead.encrypt_into(i.to_bytes(12, "big"), view[offset : offset + chunk], aad, out)

    ciphertext = container.encrypt_bytes(data, key, chunk_size=chunk)
    t_raw = _best(raw, repeats)
    t_enc = _best(lambda: container.encrypt_stream(data, _Sink(), key, chunk_size=chunk), repeats)
    t_dec = _best(lambda: container.decrypt_stream(ciphertext, _Sink(), key), repeats)
    # The same through a file-like stream: each chunk is first copied in with readinto().
    t_senc = _best(lambda: container.encrypt_stream(_reader(data), _Sink(), key, chunk_size=chunk), repeats)
    t_sdec = _best(lambda: container.decrypt_stream(_reader(ciphertext), _Sink(), key), repeats)
    mib = size / MIB
    raw_mib_s, enc_mib_s, dec_mib_s = mib / t_raw, mib / t_enc, mib / t_dec
    return {
        "stream_encrypt_mib_s": round(mib / t_senc, 1),
        "stream_decrypt_mib_s": round(mib / t_sdec, 1),
        "stream_ratio": round(min(mib / t_senc, mib / t_sdec) / raw_mib_s, 3),
        "bytes": size,
        "chunk_size": chunk,
        "encrypt_mib_s": round(enc_mib_s, 1),
        "decrypt_mib_s": round(dec_mib_s, 1),
        "raw_mib_s": round(raw_mib_s, 1),
        "encrypt_ratio": round(enc_mib_s / raw_mib_s, 3),
        "decrypt_ratio": round(dec_mib_s / raw_mib_s, 3),
        "ratio": round(min(enc_mib_s, dec_mib_s) / raw_mib_s, 3),
        "goal_ratio": 0.8,
    }


def table(result: dict[str, Any]) -> Table:
    size, chunk = result["bytes"] // MIB, result["chunk_size"] // 1024
    t = Table(title=f"Container vs raw AES-256-GCM ({size} MiB, {chunk} KiB chunks)")
    t.add_column("path")
    t.add_column("MiB/s", justify="right")
    t.add_column("vs raw", justify="right")
    t.add_row("raw AESGCM.encrypt_into", f"{result['raw_mib_s']:.0f}", "1.00")
    t.add_row("container encrypt_stream", f"{result['encrypt_mib_s']:.0f}", f"{result['encrypt_ratio']:.2f}")
    t.add_row("container decrypt_stream", f"{result['decrypt_mib_s']:.0f}", f"{result['decrypt_ratio']:.2f}")
    t.add_row("ratio (min; goal ≥ 0.8)", "", f"{result['ratio']:.2f}")
    t.add_row("file-like stream encrypt (readinto copy)", f"{result['stream_encrypt_mib_s']:.0f}", "")
    t.add_row("file-like stream decrypt (readinto copy)", f"{result['stream_decrypt_mib_s']:.0f}", "")
    t.add_row("stream ratio (min)", "", f"{result['stream_ratio']:.2f}")
    return t
