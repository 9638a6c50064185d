"""Random access to sealed containers, and datasets read by row from them (`sterling.data.rows`)."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from sterling.crypto import container
from sterling.crypto.container import HEADER_BYTES, TAG_BYTES, ChunkReader, ContainerWriter
from sterling.data.dataset import Dataset, Schema
from sterling.data.rows import ArrayRows, PooledRows, SealedRows, write_sealed, write_sealed_file
from sterling.errors import DatasetError, IntegrityError, UsageError

CHUNK = 1024


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


def _images(rows: int, seed: int, classes: int = 3) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (rows, 6, 5, 3), dtype=np.uint8)
    y = rng.integers(0, classes, rows).astype(np.int64)
    return Dataset(x, y, Schema("image", (6, 5, 3), "uint8", tuple(f"c{i}" for i in range(classes)), rows))


def _sealed(data: bytes, key: bytes) -> bytearray:
    return bytearray(container.encrypt_bytes(data, key, chunk_size=CHUNK))


def _frame(i: int) -> slice:
    start = HEADER_BYTES + i * (CHUNK + TAG_BYTES)
    return slice(start, start + CHUNK + TAG_BYTES)


# ---------------------------------------------------------------- the chunk reader


def test_random_reads_equal_the_plaintext_and_the_cache_stays_bounded(key):
    plain = os.urandom(CHUNK * 9 + 123)
    reader = ChunkReader(io.BytesIO(bytes(_sealed(plain, key))), key, cache_chunks=2)
    assert reader.size == len(plain)
    assert reader.chunks == 10
    rng = np.random.default_rng(1)
    for _ in range(200):
        off = int(rng.integers(0, len(plain)))
        n = int(rng.integers(0, 3 * CHUNK))
        assert reader.read(off, n) == plain[off : off + n]
        assert len(reader._cache) <= 2


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK, 3 * CHUNK + 1])
def test_the_streaming_writer_makes_the_container_the_one_shot_encryption_reads(key, size):
    plain = os.urandom(size)
    out = io.BytesIO()
    writer = ContainerWriter(out, key, chunk_size=CHUNK)
    for start in range(0, size, 700):  # writes that straddle chunk boundaries
        writer.write(plain[start : start + 700])
    writer.close()
    assert container.decrypt_bytes(out.getvalue(), key) == plain
    assert len(out.getvalue()) == container.ciphertext_size(size, CHUNK)
    assert ChunkReader(io.BytesIO(out.getvalue()), key).read(0, size + 5) == plain


def test_a_tampered_chunk_fails_where_it_is_read_and_nowhere_else(key):
    plain = os.urandom(CHUNK * 6)
    sealed = _sealed(plain, key)
    sealed[_frame(3).start + 10] ^= 1
    reader = ChunkReader(io.BytesIO(bytes(sealed)), key)
    assert reader.read(0, 3 * CHUNK) == plain[: 3 * CHUNK]
    with pytest.raises(IntegrityError, match="chunk 3 failed authentication"):
        reader.read(3 * CHUNK + 5, 1)
    assert reader.read(4 * CHUNK, CHUNK) == plain[4 * CHUNK : 5 * CHUNK]


def test_reordered_or_duplicated_chunks_are_refused_at_random_access(key):
    plain = os.urandom(CHUNK * 6)
    sealed = _sealed(plain, key)
    swapped = bytearray(sealed)
    swapped[_frame(1)], swapped[_frame(4)] = sealed[_frame(4)], sealed[_frame(1)]
    reader = ChunkReader(io.BytesIO(bytes(swapped)), key)
    for i in (1, 4):
        with pytest.raises(IntegrityError, match=f"chunk {i}"):
            reader.chunk(i)
    assert reader.chunk(2) == plain[2 * CHUNK : 3 * CHUNK]
    duplicated = bytearray(sealed)
    duplicated[_frame(2)] = sealed[_frame(1)]
    with pytest.raises(IntegrityError, match="chunk 2"):
        ChunkReader(io.BytesIO(bytes(duplicated)), key).chunk(2)


def test_a_truncated_container_is_refused_on_opening(key):
    sealed = bytes(_sealed(os.urandom(CHUNK * 4 + 100), key))
    frame = CHUNK + TAG_BYTES
    # At a chunk boundary the new last chunk lacks the final flag; mid-chunk its tag is wrong.
    for end in (HEADER_BYTES + 4 * frame, HEADER_BYTES + 2 * frame, len(sealed) - 1, len(sealed) - 60):
        with pytest.raises(IntegrityError):
            ChunkReader(io.BytesIO(sealed[:end]), key)
    with pytest.raises(IntegrityError, match="truncated"):
        ChunkReader(io.BytesIO(sealed[: HEADER_BYTES + 3 * frame + 5]), key)


def test_bytes_after_the_last_chunk_a_changed_header_or_the_wrong_key_are_refused(key):
    sealed = _sealed(os.urandom(CHUNK * 2), key)
    with pytest.raises(IntegrityError):
        ChunkReader(io.BytesIO(bytes(sealed) + bytes(CHUNK + TAG_BYTES)), key)
    header = bytearray(sealed)
    header[HEADER_BYTES - 1] ^= 1  # the salt
    with pytest.raises(IntegrityError):
        ChunkReader(io.BytesIO(bytes(header)), key)
    with pytest.raises(IntegrityError):
        ChunkReader(io.BytesIO(bytes(sealed)), os.urandom(32))
    with pytest.raises(IntegrityError, match="no chunk"):
        ChunkReader(io.BytesIO(bytes(sealed[: HEADER_BYTES + 3])), key)


# ---------------------------------------------------------------- the row store


def test_gathered_rows_equal_the_in_memory_dataset_from_either_writer(key):
    data = _images(500, 2)
    blobs = [bytes(_sealed(data.to_bytes(), key))]
    out = io.BytesIO()
    blocks = (data.features[i : i + 37] for i in range(0, 500, 37))
    write_sealed(out, key, schema=data.schema, labels=data.labels, blocks=blocks, chunk_size=CHUNK)
    blobs.append(out.getvalue())
    # What the streaming writer makes is the canonical encoding the in-memory path decodes, too.
    decoded = Dataset.from_bytes(container.decrypt_bytes(blobs[1], key))
    assert np.array_equal(decoded.features, data.features)
    assert decoded.schema == data.schema
    idx = np.random.default_rng(3).permutation(500)[:120]
    for blob in blobs:
        rows = SealedRows(io.BytesIO(blob), key, cache_chunks=3)
        assert rows.schema == data.schema
        assert len(rows) == 500
        assert np.array_equal(rows.labels, data.labels)
        assert np.array_equal(rows.gather(idx), data.features[idx])
        assert np.array_equal(rows.gather(np.arange(500)), data.features)


def test_a_sorted_batch_decrypts_each_chunk_it_touches_once(key):
    data = _images(2000, 4)
    rows = SealedRows(io.BytesIO(bytes(_sealed(data.to_bytes(), key))), key, cache_chunks=1)
    idx = np.sort(np.random.default_rng(5).choice(2000, 300, replace=False))
    before = rows.reader.decrypted
    rows.gather(idx)
    base = rows._offset
    touched = {(base + int(i) * rows.row_bytes + b) // CHUNK for i in idx for b in (0, rows.row_bytes - 1)}
    assert rows.reader.decrypted - before <= len(touched)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_compressed_odd_or_mismatched_contents_are_refused_with_a_dataset_error(key):
    data = _images(50, 6)
    compressed = io.BytesIO()
    meta = np.zeros(3, dtype=np.uint8)
    schema_arr = np.load(io.BytesIO(data.to_bytes()))["schema"]
    np.savez_compressed(compressed, features=data.features, labels=data.labels, schema=schema_arr)
    cases = {
        "compressed": compressed.getvalue(),
        "expected entries": _npz(features=data.features, labels=data.labels, schema=schema_arr, x=meta),
        "the schema says": _npz(
            features=data.features.astype(np.float32), labels=data.labels, schema=schema_arr
        ),
        "labels must be int64": _npz(
            features=data.features, labels=data.labels.astype(np.int32), schema=schema_arr
        ),
        "Fortran": _npz(features=np.asfortranarray(data.features), labels=data.labels, schema=schema_arr),
        "not a canonical dataset": b"not a zip at all" * 10,
    }
    for why, blob in cases.items():
        with pytest.raises(DatasetError, match=why):
            SealedRows(io.BytesIO(bytes(_sealed(blob, key))), key)
    bad = data.labels.copy()
    bad[0] = 7
    with pytest.raises(DatasetError, match="labels must lie"):
        SealedRows(
            io.BytesIO(bytes(_sealed(_npz(features=data.features, labels=bad, schema=schema_arr), key))), key
        )


def test_indices_outside_the_rows_are_refused(key):
    rows = SealedRows(io.BytesIO(bytes(_sealed(_images(10, 7).to_bytes(), key))), key)
    with pytest.raises(UsageError, match="outside"):
        rows.gather(np.array([3, 10]))
    with pytest.raises(UsageError, match="outside"):
        rows.gather(np.array([-1]))


def test_the_file_writer_leaves_nothing_when_the_rows_do_not_add_up(key, tmp_path):
    data = _images(40, 8)
    target = tmp_path / "big.sealed"
    with pytest.raises(DatasetError, match="30 rows written, the schema says 40"):
        write_sealed_file(target, key, schema=data.schema, labels=data.labels, blocks=[data.features[:30]])
    with pytest.raises(DatasetError, match="does not fit"):
        write_sealed_file(target, key, schema=data.schema, labels=data.labels, blocks=[data.features[:, :2]])
    assert not target.exists()
    assert not list(tmp_path.iterdir())
    write_sealed_file(target, key, schema=data.schema, labels=data.labels, blocks=[data.features])
    with SealedRows.open(target, key) as rows:
        assert np.array_equal(rows.gather(np.arange(40)), data.features)


def test_pooled_sources_gather_across_their_boundaries(key):
    a, b = _images(30, 9), _images(20, 10)
    pool = PooledRows([ArrayRows(a), SealedRows(io.BytesIO(bytes(_sealed(b.to_bytes(), key))), key)])
    everything = np.concatenate([a.features, b.features])
    idx = np.array([49, 0, 29, 30, 31, 5])
    assert np.array_equal(pool.gather(idx), everything[idx])
    assert np.array_equal(pool.labels, np.concatenate([a.labels, b.labels]))
    assert list(np.bincount(pool.owner)) == [30, 20]
    other = _images(5, 11, classes=4)
    with pytest.raises(UsageError, match="share shape"):
        PooledRows([ArrayRows(a), ArrayRows(other)])


def test_a_zip_entry_hiding_a_deflated_copy_is_not_streamed(key):
    data = _images(20, 12)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("features", "labels", "schema"):
            arr = {"features": data.features, "labels": data.labels}.get(name)
            if arr is None:
                arr = np.load(io.BytesIO(data.to_bytes()))["schema"]
            inner = io.BytesIO()
            np.save(inner, arr)
            zf.writestr(name + ".npy", inner.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(DatasetError, match="compressed"):
        SealedRows(io.BytesIO(bytes(_sealed(buf.getvalue(), key))), key)


def test_the_streaming_threshold_comes_from_the_environment_and_is_checked(monkeypatch, tmp_path):
    from sterling.config import DEFAULT_STREAM_ABOVE, Settings
    from sterling.errors import ConfigError

    monkeypatch.setenv("STERLING_HOME", str(tmp_path))
    monkeypatch.delenv("STERLING_STREAM_ABOVE", raising=False)
    assert Settings.from_env().stream_above == DEFAULT_STREAM_ABOVE == 256 << 20
    monkeypatch.setenv("STERLING_STREAM_ABOVE", "4096")
    assert Settings.from_env().stream_above == 4096
    for bad in ("lots", "-1"):
        monkeypatch.setenv("STERLING_STREAM_ABOVE", bad)
        with pytest.raises(ConfigError, match="STERLING_STREAM_ABOVE"):
            Settings.from_env()
