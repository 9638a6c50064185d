"""The sealed-data container: round trips, and every kind of tampering refused with nothing written."""

from __future__ import annotations

import io
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sterling.crypto import container as c
from sterling.errors import IntegrityError, UsageError

CHUNK = 1024
KEY = bytes(range(32))
FRAME = CHUNK + c.TAG_BYTES
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
plaintexts = st.one_of(
    st.binary(max_size=5 * CHUNK),
    st.integers(min_value=0, max_value=4).map(lambda k: os.urandom(k * CHUNK)),  # exact multiples
)


def seal(data: bytes) -> bytes:
    return c.encrypt_bytes(data, KEY, chunk_size=CHUNK)


def chunks(ct: bytes) -> list[bytes]:
    body = ct[c.HEADER_BYTES :]
    return [body[i : i + FRAME] for i in range(0, len(body), FRAME)]


def assert_refused_and_nothing_written(tmp_path, ciphertext: bytes, key: bytes = KEY) -> None:
    src, dst = tmp_path / "in.sealed", tmp_path / "out.bin"
    src.write_bytes(ciphertext)
    with pytest.raises(IntegrityError):
        c.decrypt_file(src, dst, key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.sealed"]
    with pytest.raises(IntegrityError):
        c.decrypt_bytes(ciphertext, key)


@PROPS
@given(plaintexts)
def test_round_trip_bytes_streams_files(tmp_path, data):
    ct = seal(data)
    assert len(ct) == c.ciphertext_size(len(data), CHUNK)
    assert c.decrypt_bytes(ct, KEY) == data
    out = io.BytesIO()
    assert c.decrypt_stream(io.BufferedReader(io.BytesIO(ct)), out, KEY) == len(data)
    assert out.getvalue() == data
    streamed = io.BytesIO()
    c.encrypt_stream(io.BufferedReader(io.BytesIO(data)), streamed, KEY, chunk_size=CHUNK)
    assert c.decrypt_bytes(streamed.getvalue(), KEY) == data
    (tmp_path / "p").write_bytes(data)
    c.encrypt_file(tmp_path / "p", tmp_path / "s", KEY, chunk_size=CHUNK)
    c.decrypt_file(tmp_path / "s", tmp_path / "d", KEY)
    assert (tmp_path / "d").read_bytes() == data


def test_same_plaintext_twice_gives_different_ciphertexts():
    assert seal(b"x" * 3000) != seal(b"x" * 3000)


@PROPS
@given(st.binary(min_size=1, max_size=4 * CHUNK), st.data())
def test_any_flipped_bit_is_refused(tmp_path, data, draw):
    ct = bytearray(seal(data))
    pos = draw.draw(st.integers(min_value=0, max_value=len(ct) - 1))
    ct[pos] ^= 1 << draw.draw(st.integers(min_value=0, max_value=7))
    assert_refused_and_nothing_written(tmp_path, bytes(ct))


@PROPS
@given(st.binary(min_size=1, max_size=4 * CHUNK), st.data())
def test_any_truncation_is_refused(tmp_path, data, draw):
    ct = seal(data)
    cut = draw.draw(st.integers(min_value=0, max_value=len(ct) - 1))
    assert_refused_and_nothing_written(tmp_path, ct[:cut])


def test_truncation_at_a_chunk_boundary_and_dropped_final_chunk(tmp_path):
    ct = seal(os.urandom(3 * CHUNK + 10))
    parts = chunks(ct)
    header = ct[: c.HEADER_BYTES]
    assert_refused_and_nothing_written(tmp_path, header + b"".join(parts[:2]))  # boundary
    assert_refused_and_nothing_written(tmp_path, header + b"".join(parts[:-1]))  # final dropped


def test_swapped_duplicated_dropped_and_appended_chunks(tmp_path):
    ct = seal(os.urandom(4 * CHUNK + 7))
    header, p = ct[: c.HEADER_BYTES], chunks(ct)
    for body in (
        [p[1], p[0], *p[2:]],  # swapped
        [p[0], p[0], *p[1:]],  # duplicated
        [p[0], *p[2:]],  # dropped from the middle
        [*p, p[-1]],  # final repeated
    ):
        assert_refused_and_nothing_written(tmp_path, header + b"".join(body))
    assert_refused_and_nothing_written(tmp_path, ct + b"\x00")  # bytes after the final chunk


def test_wrong_key_and_spliced_header(tmp_path):
    data = os.urandom(2 * CHUNK)
    ct = seal(data)
    assert_refused_and_nothing_written(tmp_path, ct, key=os.urandom(32))
    other = seal(data)
    assert_refused_and_nothing_written(tmp_path, other[: c.HEADER_BYTES] + ct[c.HEADER_BYTES :])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [(0, b"NOTSTRLE", "bad magic"), (1, 9, "version 9"), (2, 7, "algorithm 7"), (3, 16, "chunk size 16")],
)
def test_malformed_headers_are_named(tmp_path, field, value, message):
    ct = seal(b"hello")
    fields = list(struct.unpack(">8sBBI32s", ct[: c.HEADER_BYTES]))
    fields[field] = value
    bad = struct.pack(">8sBBI32s", *fields) + ct[c.HEADER_BYTES :]
    with pytest.raises(IntegrityError, match=message):
        c.decrypt_bytes(bad, KEY)
    assert_refused_and_nothing_written(tmp_path, bad)


def test_decrypt_stream_writes_only_authenticated_chunks():
    data = os.urandom(3 * CHUNK + 100)
    ct = bytearray(seal(data))
    ct[c.HEADER_BYTES + 2 * FRAME + 5] ^= 0xFF  # inside chunk 2
    out = io.BytesIO()
    with pytest.raises(IntegrityError, match="chunk 2"):
        c.decrypt_stream(io.BufferedReader(io.BytesIO(bytes(ct))), out, KEY)
    assert out.getvalue() == data[: 2 * CHUNK]


def test_bad_keys_and_chunk_sizes_are_usage_errors():
    with pytest.raises(UsageError, match="32 bytes"):
        c.encrypt_bytes(b"x", b"short")
    with pytest.raises(UsageError, match="chunk size"):
        c.encrypt_bytes(b"x", KEY, chunk_size=10)
    with pytest.raises(UsageError, match="chunk size"):
        c.encrypt_bytes(b"x", KEY, chunk_size=1 << 30)
