"""Rows by index: datasets larger than memory, read from their sealed container as needed.

A `RowSource` holds its labels in memory (8 bytes a row) and gathers feature
rows by index. `ArrayRows` wraps an in-memory `Dataset`; `SealedRows` reads
the canonical .npz (`Dataset.to_bytes`) inside a sealed container without
decrypting the whole: `zipfile` over a seekable decrypting view
(`container.PlainView`) finds `features.npy` and `labels.npy`, their npy
headers give dtype, shape and where the rows start, and a feature row is a
fixed byte range, read through the container's chunk cache. Anything not
stored uncompressed, in C order, little-endian, or not matching the schema
stored with it is refused with a `DatasetError` naming what is wrong.

`write_sealed` is the producer's side: a canonical .npz streamed, block of
rows by block, into a sealed container, never holding the whole array.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from sterling.crypto import container
from sterling.data.dataset import NPZ_ERRORS, Dataset, Schema, schema_from_array
from sterling.errors import DatasetError, UsageError
from sterling.files import atomic_writer

ENTRIES = ("features.npy", "labels.npy", "schema.npy")
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature … file name length, extra field length
_MAX_SCHEMA_BYTES = 1 << 24


class RowSource(Protocol):
    """Rows of one dataset: labels in memory, features gathered by index."""

    @property
    def schema(self) -> Schema: ...

    @property
    def labels(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def gather(self, index: np.ndarray) -> np.ndarray:
        """The feature rows at `index` (any order), shape (len(index), *schema.shape)."""
        ...


def _checked_index(index: np.ndarray, rows: int) -> np.ndarray:
    idx = np.asarray(index, dtype=np.int64)
    if idx.ndim != 1:
        raise UsageError("row indices are one-dimensional")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= rows):
        raise UsageError(f"row indices {int(idx.min())}..{int(idx.max())} outside 0..{rows - 1}")
    return idx


class ArrayRows:
    """An in-memory `Dataset` as a `RowSource`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    @property
    def schema(self) -> Schema:
        return self.dataset.schema

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    def __len__(self) -> int:
        return self.dataset.schema.rows

    def gather(self, index: np.ndarray) -> np.ndarray:
        return np.asarray(self.dataset.features[_checked_index(index, len(self))])


class _Entry:
    """Where an npy array's data starts in the plaintext, with its dtype and shape."""

    def __init__(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.offset, self.dtype, self.shape = offset, dtype, shape


def _entry(view: container.PlainView, info: zipfile.ZipInfo, source: str) -> _Entry:
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise DatasetError(
            f"{source}: {info.filename} is compressed or encrypted; only stored entries stream"
        )
    view.seek(info.header_offset)
    raw = view.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise DatasetError(f"{source}: {info.filename}'s local header is cut off")
    sig, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
    if sig != b"PK\x03\x04":
        raise DatasetError(f"{source}: {info.filename}'s local header is not a zip header")
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    view.seek(start)
    try:
        version = np.lib.format.read_magic(view)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(view)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(view)
        else:
            raise DatasetError(f"{source}: {info.filename} has npy version {version}")
    except DatasetError:
        raise
    except NPZ_ERRORS as exc:
        raise DatasetError(
            f"{source}: {info.filename} has no valid npy header ({type(exc).__name__})"
        ) from None
    offset = view.tell()
    if fortran or dtype.hasobject:
        raise DatasetError(f"{source}: {info.filename} is in Fortran order or holds objects")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + nbytes != info.file_size or start + info.file_size > view.reader.size:
        raise DatasetError(f"{source}: {info.filename}'s size does not match its npy header")
    return _Entry(offset, dtype, tuple(int(d) for d in shape))


class SealedRows:
    """A canonical dataset inside a sealed container file, read by row (module docstring).

    Owns `file` and closes it on `close()`. `cache_chunks` bounds the decrypted chunks held.
    """

    def __init__(
        self, file: BinaryIO, key: bytes, *, cache_chunks: int = 16, source: str = "sealed dataset"
    ) -> None:
        self.file = file
        self.reader = container.ChunkReader(file, key, cache_chunks=cache_chunks)
        view = container.PlainView(self.reader)
        try:
            with zipfile.ZipFile(view) as zf:
                infos = {i.filename: i for i in zf.infolist()}
                if sorted(infos) != sorted(ENTRIES) or len(zf.infolist()) != len(ENTRIES):
                    raise DatasetError(f"{source}: expected entries {list(ENTRIES)}, found {sorted(infos)}")
                entries = {name: _entry(view, infos[name], source) for name in ENTRIES}
        except DatasetError:
            raise
        except (*NPZ_ERRORS, zipfile.LargeZipFile) as exc:
            raise DatasetError(f"{source}: not a canonical dataset ({type(exc).__name__})") from None
        self._schema = self._read_schema(entries["schema.npy"], source)
        s = self._schema
        feats, labels = entries["features.npy"], entries["labels.npy"]
        if feats.dtype != np.dtype(s.dtype) or feats.shape != (s.rows, *s.shape):
            raise DatasetError(
                f"{source}: features are {feats.dtype} {feats.shape}, the schema says {s.dtype} "
                f"{(s.rows, *s.shape)}"
            )
        if labels.dtype != np.dtype("<i8") or labels.shape != (s.rows,):
            raise DatasetError(
                f"{source}: labels must be int64 of shape ({s.rows},), got {labels.dtype} {labels.shape}"
            )
        self._labels = np.frombuffer(self.reader.read(labels.offset, s.rows * 8), dtype="<i8").astype(
            np.int64
        )
        if int(self._labels.min()) < 0 or int(self._labels.max()) >= len(s.classes):
            raise DatasetError(f"{source}: labels must lie in [0, {len(s.classes)})")
        self._offset = feats.offset
        self._dtype = feats.dtype
        self.row_bytes = int(np.prod(s.shape)) * feats.dtype.itemsize
        self.source = source

    @classmethod
    def open(cls, path: Path, key: bytes, *, cache_chunks: int = 16, source: str | None = None) -> SealedRows:
        file = open(path, "rb")  # noqa: SIM115 - the row store owns and closes it
        try:
            return cls(file, key, cache_chunks=cache_chunks, source=source or str(path))
        except BaseException:
            file.close()
            raise

    def _read_schema(self, entry: _Entry, source: str) -> Schema:
        if entry.dtype != np.uint8 or len(entry.shape) != 1 or entry.shape[0] > _MAX_SCHEMA_BYTES:
            raise DatasetError(f"{source}: schema array is not JSON bytes")
        raw = np.frombuffer(self.reader.read(entry.offset, entry.shape[0]), dtype=np.uint8)
        return schema_from_array(raw, source=source)

    @property
    def schema(self) -> Schema:
        return self._schema

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return self._schema.rows

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Rows at `index`, read in ascending order so that each chunk is decrypted once per call."""
        idx = _checked_index(index, len(self))
        out = np.empty((len(idx), self.row_bytes), dtype=np.uint8)
        rb, base, size = self.row_bytes, self._offset, self.reader.header.chunk_size
        for pos in np.argsort(idx, kind="stable"):
            offset = base + int(idx[pos]) * rb
            chunk, start = divmod(offset, size)
            plain = self.reader.chunk(chunk)
            if start + rb <= len(plain):  # the row lies in one chunk: no copy but into `out`
                out[pos] = np.frombuffer(plain, dtype=np.uint8, count=rb, offset=start)
            else:
                out[pos] = np.frombuffer(self.reader.read(offset, rb), dtype=np.uint8)
        features = out.view(self._dtype).reshape(len(idx), *self._schema.shape)
        if features.dtype.kind == "f" and not np.isfinite(features).all():
            raise DatasetError(f"{self.source}: features contain NaN or infinite values")
        return features

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> SealedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PooledRows:
    """Several row sources end to end, as one (the job's listings in order)."""

    def __init__(self, sources: Sequence[RowSource]) -> None:
        if not sources:
            raise UsageError("pooling needs at least one row source")
        first = sources[0].schema
        for s in sources[1:]:
            if (s.schema.shape, s.schema.dtype, s.schema.classes) != (
                first.shape,
                first.dtype,
                first.classes,
            ):
                raise UsageError("pooled datasets must share shape, dtype and classes")
        self.sources = list(sources)
        self.starts = np.cumsum([0, *(len(s) for s in sources)])
        self.labels = np.concatenate([s.labels for s in sources])
        self.owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(sources)])
        self.schema = first

    def __len__(self) -> int:
        return int(self.starts[-1])

    def gather(self, index: np.ndarray) -> np.ndarray:
        idx = _checked_index(index, len(self))
        out = np.empty((len(idx), *self.schema.shape), dtype=np.dtype(self.schema.dtype))
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for k, src in enumerate(self.sources):
            here = np.flatnonzero(which == k)
            if here.size:
                out[here] = src.gather(idx[here] - self.starts[k])
        return out


def write_sealed(
    dst: BinaryIO,
    key: bytes,
    *,
    schema: Schema,
    labels: np.ndarray,
    blocks: Iterable[np.ndarray],
    chunk_size: int = container.DEFAULT_CHUNK,
) -> int:
    """Seal the canonical .npz of `schema`, `labels` and the feature rows in `blocks` into `dst`.

    `blocks` yields arrays of shape (k, *schema.shape) and dtype `schema.dtype` whose rows add
    up to `schema.rows`. Returns the plaintext length. Write to an atomic file (`write_sealed_file`):
    on a bad block this raises midway.
    """
    labels = np.asarray(labels)
    if labels.dtype != np.int64 or labels.shape != (schema.rows,):
        raise DatasetError(
            f"labels must be int64 of shape ({schema.rows},), got {labels.dtype} {labels.shape}"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= len(schema.classes):
        raise DatasetError(f"labels must lie in [0, {len(schema.classes)})")
    import json

    meta = np.frombuffer(json.dumps(schema.to_json(), sort_keys=True).encode(), dtype=np.uint8)
    writer = container.ContainerWriter(dst, key, chunk_size=chunk_size)
    with zipfile.ZipFile(writer, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("features.npy", mode="w", force_zip64=True) as f:
            dtype = np.dtype(schema.dtype)
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
            np.lib.format.write_array_header_2_0(f, {**header, "shape": (schema.rows, *schema.shape)})
            seen = 0
            for block in blocks:
                if block.dtype != dtype or block.shape[1:] != schema.shape:
                    raise DatasetError(
                        f"a block of {block.dtype} {block.shape} does not fit {dtype} {schema.shape}"
                    )
                if dtype.kind == "f" and not np.isfinite(block).all():
                    raise DatasetError("features contain NaN or infinite values")
                seen += len(block)
                if seen > schema.rows:
                    raise DatasetError(f"more than the schema's {schema.rows} rows")
                f.write(np.ascontiguousarray(block).tobytes())
            if seen != schema.rows:
                raise DatasetError(f"{seen} rows written, the schema says {schema.rows}")
        for name, arr in (("labels.npy", labels), ("schema.npy", meta)):
            with zf.open(name, mode="w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    writer.close()
    return writer.written


def write_sealed_file(path: Path, key: bytes, **kw: object) -> int:
    """`write_sealed` to `path`, atomically: on any failure nothing appears there."""
    with atomic_writer(path) as out:
        return write_sealed(out, key, **kw)  # type: ignore[arg-type]


def download_rows(
    uri: str, sha256: bytes, key: bytes, *, work_dir: Path | None, source: str, cache_chunks: int = 16
) -> SealedRows:
    """The sealed dataset at `uri` as a row store over a verified copy on local disk.

    The ciphertext streams into an anonymous temporary file in `work_dir` (no name on disk: it
    disappears when the store closes, or with the process), its sha256 checked on the way.
    """
    import tempfile

    from sterling.storage.blobs import fetch_verified_to

    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    file = tempfile.TemporaryFile(dir=work_dir)  # noqa: SIM115 - the row store owns and closes it
    try:
        fetch_verified_to(uri, sha256, file)
        return SealedRows(file, key, cache_chunks=cache_chunks, source=source)
    except BaseException:
        file.close()
        raise
