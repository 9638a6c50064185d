"""Writing files so that a crash never leaves half of one under its final name.

Everything Sterling writes to a user's disk (keys, ciphertext, decrypted
data, manifests, deployment records) goes to a hidden temporary name in the
same folder, is flushed to disk, and is then renamed over the destination,
which POSIX makes atomic.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temp_name(dst: Path) -> Path:
    """A unique hidden name beside `dst`, for a file not yet complete."""
    return dst.with_name(f".{dst.name}.partial-{os.getpid()}-{os.urandom(4).hex()}")


@contextlib.contextmanager
def atomic_writer(dst: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a file to write; it appears at `dst` only if the block finishes without error."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dst)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(dst: Path, data: bytes, *, mode: int = 0o644) -> None:
    with atomic_writer(dst, mode=mode) as fh:
        fh.write(data)
