"""Dataset files (data/loaders.py, data/dataset.py): CSV, NPZ, Parquet, image folders and canonical bytes.

Each import either gives a Dataset whose invariants hold or a DatasetError naming the file; it
never writes anything beside the input.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fuzzkit import fuzz, outcome, tree
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from sterling.data.dataset import Dataset, Schema
from sterling.data.loaders import load_dataset
from sterling.errors import DatasetError


@contextmanager
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sterling-fuzz-data-") as tmp:
        yield Path(tmp)


def import_or_refusal(path: Path, *, label_column: str = "label") -> Dataset | DatasetError:
    """Import `path`; on a refusal, check the message names the file and nothing was written."""
    root = path if path.is_dir() else path.parent
    before = tree(root)
    dataset = outcome(lambda: load_dataset(path, label_column=label_column), DatasetError)
    if isinstance(dataset, DatasetError):
        assert str(path) in str(dataset) or path.name in str(dataset), str(dataset)
        assert tree(root) == before
        return dataset
    assert tree(root) == before
    s = dataset.schema
    assert dataset.features.shape == (s.rows, *s.shape)
    assert dataset.labels.shape == (s.rows,)
    assert int(dataset.labels.min()) >= 0
    assert int(dataset.labels.max()) < len(s.classes)
    assert Dataset.from_bytes(dataset.to_bytes()).schema == s  # what gets encrypted decodes again
    return dataset


# ------------------------------------------------------------------------------------------ CSV

CELLS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(
        ["nan", "inf", "-inf", "NaN", "1e999", "", " ", "1,5", "0x10", "1_000", "١٢", '"', "é", "\t"]
    ),
)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """A CSV with a header and a label column, then perhaps broken (encoding, cells, structure)."""
    width = draw(st.integers(1, 4))
    header = [f"f{i}" for i in range(width)]
    header.insert(draw(st.integers(0, width)), "label")
    if draw(st.booleans()):
        header[draw(st.integers(0, width))] = draw(
            st.sampled_from(["", "label", "名前", " label ", "a,b", '"q"'])
        )
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        row = [draw(st.floats(-1e6, 1e6, allow_nan=False).map(repr)) for _ in header]
        row[header.index("label") if "label" in header else 0] = draw(
            st.sampled_from(["0", "1", "sick", "-3", "1.5", "", "10000000"])
        )
        if draw(st.integers(0, 3)) == 0:
            row[draw(st.integers(0, len(row) - 1))] = draw(CELLS)
        if draw(st.integers(0, 5)) == 0:
            row = row[:-1] if draw(st.booleans()) else [*row, "9"]
        rows.append(row)
    text = "\n".join(",".join(r) for r in [header, *rows]) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n"]))
    raw = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"])), errors="replace")
    if draw(st.booleans()):
        raw = draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe"])) + raw
    if raw and draw(st.integers(0, 4)) == 0:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    return raw


@fuzz(80)
@given(csv_files(), st.sampled_from(["label", "f0", "missing"]))
@example(b"label,f0\n0,1\n", "label")
def test_csv_imports_or_is_refused_naming_the_file(content, label_column):
    with folder() as root:
        path = root / "data.csv"
        path.write_bytes(content)
        import_or_refusal(path, label_column=label_column)


# ------------------------------------------------------------------------------------------ NPZ

DTYPES = st.sampled_from(
    [
        "float16",
        "float32",
        "float64",
        "int8",
        "int64",
        "uint8",
        "uint64",
        "bool",
        "complex64",
        "<U3",
        "|S2",
        "datetime64[s]",
        "timedelta64[ms]",
    ]
)
ARRAYS = DTYPES.flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4))
)


@fuzz(80)
@given(
    st.sampled_from(
        [("x", "y"), ("features", "labels"), ("train_images", "train_labels"), ("X", "y"), ("a", "b")]
    ),
    ARRAYS,
    ARRAYS,
    st.booleans(),
)
@example(("x", "y"), np.zeros((2, 3), np.float32), np.array([0, 1]), False)
def test_npz_arrays_of_any_dtype_and_shape_import_or_are_refused(names, x, y, compressed):
    with folder() as root:
        path = root / "data.npz"
        (np.savez_compressed if compressed else np.savez)(path, **{names[0]: x, names[1]: y})
        import_or_refusal(path)


def _canonical() -> bytes:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    return Dataset(x, np.array([0, 1, 1, 0]), Schema("tabular", (6,), "float32", ("a", "b"), 4)).to_bytes()


CANONICAL = _canonical()


@fuzz(60)
@given(st.integers(0, len(CANONICAL) - 1), st.sampled_from(["truncate", "flip", "zero"]), st.integers(1, 255))
def test_broken_npz_bytes_are_refused_or_still_valid(at, how, value):
    raw = bytearray(CANONICAL)
    if how == "truncate":
        raw = raw[:at]
    elif how == "flip":
        raw[at] ^= value
    else:
        raw[at : at + 16] = bytes(len(raw[at : at + 16]))
    with folder() as root:
        path = root / "data.npz"
        path.write_bytes(bytes(raw))
        import_or_refusal(path)


# ---------------------------------------------------------------------------- canonical bytes

SCHEMA = {
    "modality": "tabular",
    "shape": [6],
    "dtype": "float32",
    "classes": ["a", "b"],
    "rows": 4,
    "feature_names": None,
}
SCHEMA_VALUES = st.one_of(
    st.sampled_from([None, True, -1, 0, 2**64, 1e308, float("nan"), "", "image", "float64", [], [0], [6, 0],
                     {}, ["a"] * 3, "\ud800"]),
    st.lists(st.sampled_from([-2, 0, 1, 6, 8, 2**63, 2**64]), max_size=4),
    st.text(max_size=8),
)  # fmt: skip


def _with_schema(
    schema: object, *, raw_schema: bytes | None = None, features: np.ndarray | None = None
) -> bytes:
    buf = io.BytesIO()
    text = raw_schema if raw_schema is not None else json.dumps(schema).encode()
    np.savez(
        buf,
        features=np.arange(24, dtype=np.float32).reshape(4, 6) if features is None else features,
        labels=np.array([0, 1, 1, 0]),
        schema=np.frombuffer(text, dtype=np.uint8),
    )
    return buf.getvalue()


@fuzz(80)
@given(st.sampled_from(sorted(SCHEMA)), st.sampled_from(["remove", "replace", "extra"]), SCHEMA_VALUES)
@example("shape", "nest", None)  # found by fuzzing: deep JSON in the schema could crash the enclave
def test_a_canonical_dataset_with_a_broken_schema_is_refused(field, how, value):
    schema = dict(SCHEMA)
    raw = None
    if how == "remove":
        del schema[field]
    elif how == "replace":
        schema[field] = value
    elif how == "extra":
        schema["extra"] = value
    else:
        raw = b'{"shape": ' + b"[" * 70_000 + b"]" * 70_000 + b"}"
    decoded = outcome(
        lambda: Dataset.from_bytes(_with_schema(schema, raw_schema=raw), source="upload.npz"), DatasetError
    )
    if isinstance(decoded, DatasetError):
        assert str(decoded).startswith(("upload.npz: ", "invalid schema: ", "features ", "labels ")), str(
            decoded
        )
        return
    assert decoded.schema.rows == 4
    assert decoded.features.shape == (4, 6)


@fuzz(40)
@given(ARRAYS)
def test_canonical_features_of_any_dtype_and_shape_are_refused_or_match_the_schema(features):
    decoded = outcome(lambda: Dataset.from_bytes(_with_schema(SCHEMA, features=features)), DatasetError)
    if isinstance(decoded, DatasetError):
        assert str(decoded)
        return
    assert decoded.features.shape == (4, 6)
    assert decoded.features.dtype == np.float32


# ------------------------------------------------------------------------------------- Parquet

COLUMNS = st.sampled_from(
    [
        pa.array([1, 2, 3]),
        pa.array([0.5, None, 2.0]),
        pa.array([float("nan"), 1.0, float("inf")]),
        pa.array(["a", "b", "a"]),
        pa.array([True, False, True]),
        pa.array([[1], [2, 3], []]),
        pa.array([1, 2, 3], type=pa.timestamp("s")),
        pa.array(["x", "y", "x"]).dictionary_encode(),
        pa.array([None, None, None], type=pa.null()),
        pa.array([b"\x00", b"\xff", b""]),
        pa.array([2**63 - 1, -(2**63), 0]),
        pa.array([{"a": 1}, {"a": 2}, {"a": 3}]),
    ]
)


@fuzz(50)
@given(
    st.lists(st.tuples(st.sampled_from(["label", "f0", "f1", "é"]), COLUMNS), min_size=1, max_size=4),
    st.data(),
)
def test_parquet_columns_of_any_type_import_or_are_refused(columns, data):
    names = [n for n, _ in columns]
    if len(set(names)) != len(names):
        names = [f"{n}{i}" if i else n for i, n in enumerate(names)]
    table = pa.table(dict(zip(names, [c for _, c in columns], strict=True)))
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    raw = buf.getvalue().to_pybytes()
    if data.draw(st.integers(0, 3)) == 0:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    with folder() as root:
        path = root / "data.parquet"
        path.write_bytes(raw)
        import_or_refusal(path)


# -------------------------------------------------------------------------------- image folders


def _image(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = st.tuples(
    st.sampled_from(["RGB", "L", "P", "RGBA", "I;16", "1", "LA"]),
    st.sampled_from([(4, 4), (4, 4), (1, 1), (3, 5)]),
    st.sampled_from(["PNG", "PNG", "BMP", "TIFF", "GIF"]),
    st.sampled_from(["whole", "whole", "truncated", "garbage", "empty"]),
)


@fuzz(30)
@given(st.lists(st.lists(IMAGES, min_size=0, max_size=3), min_size=0, max_size=3), st.booleans())
@example([[("RGB", (4, 4), "PNG", "whole")], [("L", (4, 4), "PNG", "whole")]], False)
def test_image_folders_import_or_are_refused(classes, zipped):
    with folder() as root:
        data = root / "images"
        data.mkdir()
        for c, images in enumerate(classes):
            (data / f"class{c}").mkdir()
            for i, (mode, size, fmt, state) in enumerate(images):
                try:
                    raw = _image(mode, size, fmt)
                except (OSError, ValueError, KeyError):  # PIL cannot write this mode in this format
                    raw = _image("RGB", size, fmt)
                raw = {
                    "whole": raw,
                    "truncated": raw[: len(raw) // 2],
                    "garbage": b"\x89PNG" + raw[::-1],
                    "empty": b"",
                }[state]
                (data / f"class{c}" / f"{i}.{fmt.lower()}").write_bytes(raw)
        if zipped:  # a zip is not a folder: it is refused by suffix, by name
            path = root / "images.zip"
            with zipfile.ZipFile(path, "w") as z:
                for p in data.rglob("*"):
                    z.write(p, p.relative_to(data))
            import_or_refusal(path)
        else:
            import_or_refusal(data)
