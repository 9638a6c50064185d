"""The sealed container (crypto/container.py), structure-aware: headers and chunk sequences edited.

tests/unit/test_sealed_container.py covers random bit flips, truncations and a few fixed chunk
edits; here hypothesis edits the structure itself: any header field set to any value, and any
sequence of chunk operations (swap, duplicate, drop, splice from another container under the
same key, extend, insert a forged frame). Every result other than the original chunk sequence is
refused with an IntegrityError, decrypt_file leaves nothing, and decrypt_stream writes only a
prefix of the plaintext.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from pathlib import Path

import pytest
from fuzzkit import fuzz, outcome
from hypothesis import given
from hypothesis import strategies as st

from sterling.crypto import container as c
from sterling.errors import IntegrityError, UsageError

CHUNK = c.MIN_CHUNK
FRAME = CHUNK + c.TAG_BYTES
KEY = bytes(range(32))
HEADER = struct.Struct(">8sBBI32s")


def split(ct: bytes) -> tuple[bytes, list[bytes]]:
    body = ct[c.HEADER_BYTES :]
    return ct[: c.HEADER_BYTES], [body[i : i + FRAME] for i in range(0, len(body), FRAME)]


def assert_refused(ct: bytes, plaintext: bytes) -> None:
    with pytest.raises(IntegrityError) as caught:
        c.decrypt_bytes(ct, KEY)
    assert str(caught.value)
    out = io.BytesIO()
    with pytest.raises(IntegrityError):
        c.decrypt_stream(io.BufferedReader(io.BytesIO(ct)), out, KEY)
    written = out.getvalue()
    assert plaintext.startswith(written)
    assert len(written) % CHUNK == 0
    with tempfile.TemporaryDirectory(prefix="sterling-fuzz-sealed-") as tmp:
        src, dst = Path(tmp) / "in.sealed", Path(tmp) / "out.bin"
        src.write_bytes(ct)
        with pytest.raises(IntegrityError):
            c.decrypt_file(src, dst, KEY)
        assert [p.name for p in Path(tmp).iterdir()] == ["in.sealed"]


@fuzz(60)
@given(
    st.binary(max_size=2 * CHUNK),
    st.sampled_from([0, 1, 2, 3, 4]),
    st.one_of(
        st.binary(min_size=8, max_size=8),
        st.integers(0, 255),
        st.sampled_from([0, 1, CHUNK - 1, CHUNK + 1, 2 * CHUNK, c.MAX_CHUNK, c.MAX_CHUNK + 1, 2**32 - 1]),
        st.binary(min_size=32, max_size=32),
    ),
)
def test_any_header_field_set_to_any_value_is_refused(plaintext, field, value):
    header, frames = split(c.encrypt_bytes(plaintext, KEY, chunk_size=CHUNK))
    fields = list(HEADER.unpack(header))
    kinds = (bytes, int, int, int, bytes)
    if not isinstance(value, kinds[field]) or (isinstance(value, bytes) and len(value) != len(fields[field])):
        value = (
            os.urandom(len(fields[field]))
            if kinds[field] is bytes
            else value
            if isinstance(value, int)
            else 7
        )
    if field in (1, 2):
        value %= 256
    if value == fields[field]:
        return
    assert_refused(HEADER.pack(*fields[:field], value, *fields[field + 1 :]) + b"".join(frames), plaintext)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["swap", "duplicate", "drop", "splice", "extend", "forge", "retag"]),
        st.integers(0, 10),
        st.integers(0, 10),
    ),
    min_size=1,
    max_size=4,
)


@fuzz(80)
@given(st.binary(min_size=0, max_size=4 * CHUNK + 100), OPS)
def test_any_sequence_of_chunk_edits_is_refused(plaintext, ops):
    ct = c.encrypt_bytes(plaintext, KEY, chunk_size=CHUNK)
    header, frames = split(ct)
    _, other = split(c.encrypt_bytes(plaintext, KEY, chunk_size=CHUNK))  # same key and sizes, other salt
    edited = list(frames)
    for op, i, j in ops:
        n = len(edited)
        i, j = i % max(n, 1), j % max(n, 1)
        if op == "swap" and n > 1:
            edited[i], edited[j] = edited[j], edited[i]
        elif op == "duplicate" and n:
            edited.insert(j, edited[i])
        elif op == "drop" and n:
            del edited[i]
        elif op == "splice" and n:
            edited[i] = other[i % len(other)]
        elif op == "extend" and n:
            edited[i] = edited[i] + bytes(j + 1)
        elif op == "forge":
            edited.insert(i, os.urandom(FRAME if j % 2 else c.TAG_BYTES + j))
        elif op == "retag" and n:
            edited[i] = edited[i][: -c.TAG_BYTES] + bytes(c.TAG_BYTES)
    if edited == frames:
        assert c.decrypt_bytes(ct, KEY) == plaintext
        return
    assert_refused(header + b"".join(edited), plaintext)


@fuzz(40)
@given(st.binary(max_size=2 * c.HEADER_BYTES))
def test_any_bytes_as_a_header_parse_or_are_refused(raw):
    header = outcome(lambda: c.Header.parse(raw), IntegrityError)
    if isinstance(header, IntegrityError):
        assert str(header).startswith(
            ("not a Sterling container", "unsupported container", "container chunk size")
        )
        return
    assert header.pack() == raw[: c.HEADER_BYTES]


@fuzz(30)
@given(
    st.one_of(st.binary(max_size=64), st.text(max_size=40), st.none(), st.integers()),
    st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([c.MIN_CHUNK - 1, c.MAX_CHUNK + 1, 0])),
)
def test_bad_keys_and_chunk_sizes_are_usage_errors(key, chunk_size):
    ct = outcome(lambda: c.encrypt_bytes(b"data", key, chunk_size=chunk_size), UsageError)  # type: ignore[arg-type]
    if isinstance(ct, UsageError):
        assert "32 bytes" in str(ct) or "chunk size" in str(ct)
        return
    assert c.decrypt_bytes(ct, key) == b"data"  # type: ignore[arg-type]
