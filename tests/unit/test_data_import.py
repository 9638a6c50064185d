"""Dataset import: every format loads to the canonical form; every bad file is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sterling.data.dataset import Dataset, Schema
from sterling.data.loaders import inspect, load_dataset
from sterling.errors import DatasetError

RETINA = Path(__file__).resolve().parents[3] / "shared" / "data" / "retinamnist.npz"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def png(path: Path, size=(8, 6), color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


# ------------------------------------------------------------------ happy paths


def test_csv_with_string_labels(tmp_path):
    ds = load_dataset(write(tmp_path / "a.csv", "x,y,label\n1,2,sick\n3,4.5,well\n-1,0,sick\n"))
    assert ds.schema.modality == "tabular"
    assert ds.schema.shape == (2,)
    assert ds.schema.classes == ("sick", "well")
    assert ds.schema.feature_names == ("x", "y")
    assert ds.labels.tolist() == [0, 1, 0]
    assert ds.features.dtype == np.float32
    assert ds.features[1].tolist() == [3.0, 4.5]


def test_csv_integer_labels_keep_their_value_and_label_column_option(tmp_path):
    ds = load_dataset(write(tmp_path / "a.csv", "grade,f\n2,0.5\n0,1.5\n"), label_column="grade")
    assert ds.schema.classes == ("0", "1", "2")
    assert ds.labels.tolist() == [2, 0]


def test_parquet(tmp_path):
    table = pa.table({"f1": [1.0, 2.0, 3.0], "f2": [1, 0, 1], "label": ["a", "b", "a"]})
    pq.write_table(table, tmp_path / "d.parquet")
    ds = load_dataset(tmp_path / "d.parquet")
    assert ds.schema.shape == (2,)
    assert ds.schema.classes == ("a", "b")
    assert ds.features[:, 1].tolist() == [1.0, 0.0, 1.0]


def test_image_folder(tmp_path):
    for i in range(3):
        png(tmp_path / "imgs" / "healthy" / f"{i}.png", color=(10 * i, 0, 0))
    png(tmp_path / "imgs" / "lesion" / "0.png")
    ds = load_dataset(tmp_path / "imgs")
    assert ds.schema.modality == "image"
    assert ds.schema.shape == (6, 8, 3)
    assert ds.schema.classes == ("healthy", "lesion")
    assert ds.labels.tolist() == [0, 0, 0, 1]
    assert ds.features.dtype == np.uint8
    assert ds.features[3, 0, 0].tolist() == [200, 30, 30]


def test_npz_pairs_and_medmnist_style(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.ones((5, 3)), y=np.array([0, 1, 1, 0, 1]))
    assert load_dataset(tmp_path / "t.npz").schema.shape == (3,)
    imgs = np.zeros((4, 28, 28, 3), dtype=np.uint8)
    np.savez(tmp_path / "m.npz", train_images=imgs, train_labels=np.array([[0], [4], [2], [1]]))
    ds = load_dataset(tmp_path / "m.npz")
    assert ds.schema.modality == "image"
    assert ds.schema.shape == (28, 28, 3)
    assert ds.schema.classes == ("0", "1", "2", "3", "4")
    assert ds.labels.tolist() == [0, 4, 2, 1]


@pytest.mark.skipif(
    not RETINA.exists(), reason=f"RetinaMNIST not at {RETINA}; get it from https://medmnist.com"
)
def test_real_retinamnist():
    ds = load_dataset(RETINA)
    assert ds.schema.rows == 1080
    assert ds.schema.shape == (28, 28, 3)
    assert sum(ds.class_counts().values()) == 1080


def test_canonical_round_trip(tmp_path):
    ds = load_dataset(write(tmp_path / "a.csv", "x,label\n1,a\n2,b\n"))
    back = Dataset.from_bytes(ds.to_bytes())
    assert back.schema == ds.schema
    assert np.array_equal(back.features, ds.features)
    assert np.array_equal(back.labels, ds.labels)
    ds.write_canonical(tmp_path / "c.npz")
    assert load_dataset(tmp_path / "c.npz").schema == ds.schema


def test_inspect_changes_nothing(tmp_path):
    f = write(tmp_path / "a.csv", "x,label\n1,a\n2,b\n3,b\n")
    before = f.read_bytes()
    info = inspect(f)
    assert info["rows"] == 3
    assert info["class_counts"] == {"a": 1, "b": 2}
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("ragged.csv", "a,b,label\n1,2,x\n3,x\n", r"ragged\.csv: row 3: expected 3 columns, got 2"),
        ("nolabel.csv", "a,b\n1,2\n", r"nolabel\.csv: no label column 'label'; columns are a, b"),
        ("emptylabel.csv", "a,label\n1,x\n2,\n", r"emptylabel\.csv: row 3: missing label"),
        ("text.csv", "a,label\n1,x\nhello,y\n", r"text\.csv: row 3, column a: 'hello' is not a number"),
        ("nan.csv", "a,label\n1,x\nnan,y\n", r"nan\.csv: row 3, column a: NaN or infinite"),
        ("header.csv", "a,label\n", r"header\.csv: no data rows"),
        ("data.txt", "1,2\n", r"data\.txt: unknown dataset format \.txt"),
    ],
)
def test_bad_tabular_files_are_named(tmp_path, name, content, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(write(tmp_path / name, content))


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DatasetError, match=r"empty\.csv: the file is empty"):
        load_dataset(write(tmp_path / "empty.csv", ""))
    with pytest.raises(DatasetError, match=r"nope\.csv: no such file"):
        load_dataset(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="above the 10-byte limit"):
        load_dataset(write(tmp_path / "big.csv", "a,label\n1,x\n2,y\n"), max_bytes=10)


def test_bad_parquet(tmp_path):
    pq.write_table(pa.table({"f": [1.0, None], "label": ["a", "b"]}), tmp_path / "n.parquet")
    with pytest.raises(DatasetError, match=r"n\.parquet: row 2: column f: missing value"):
        load_dataset(tmp_path / "n.parquet")
    pq.write_table(pa.table({"f": ["x", "y"], "label": ["a", "b"]}), tmp_path / "s.parquet")
    with pytest.raises(DatasetError, match=r"s\.parquet: column f has type string"):
        load_dataset(tmp_path / "s.parquet")
    write(tmp_path / "junk.parquet", "not parquet")
    with pytest.raises(DatasetError, match=r"junk\.parquet: not a readable Parquet"):
        load_dataset(tmp_path / "junk.parquet")


def test_bad_image_folders(tmp_path):
    png(tmp_path / "mixed" / "a" / "1.png", size=(8, 8))
    png(tmp_path / "mixed" / "b" / "2.png", size=(9, 8))
    with pytest.raises(DatasetError, match=r"2\.png: image is 9x8, but .*1\.png is 8x8"):
        load_dataset(tmp_path / "mixed")
    png(tmp_path / "corrupt" / "a" / "1.png")
    write(tmp_path / "corrupt" / "a" / "2.png", "not an image")
    with pytest.raises(DatasetError, match=r"2\.png: unreadable image"):
        load_dataset(tmp_path / "corrupt")
    png(tmp_path / "emptyclass" / "a" / "1.png")
    (tmp_path / "emptyclass" / "b").mkdir()
    with pytest.raises(DatasetError, match=r"emptyclass/b: class folder has no images"):
        load_dataset(tmp_path / "emptyclass")
    (tmp_path / "noclasses").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset(tmp_path / "noclasses")


def test_bad_npz(tmp_path):
    np.savez(tmp_path / "u.npz", a=np.ones(3))
    with pytest.raises(DatasetError, match=r"u\.npz: no known arrays .*found a"):
        load_dataset(tmp_path / "u.npz")
    np.savez(tmp_path / "m.npz", x=np.ones((3, 2)), y=np.zeros(4, dtype=int))
    with pytest.raises(DatasetError, match=r"m\.npz: 3 feature rows but 4 labels"):
        load_dataset(tmp_path / "m.npz")
    np.savez(tmp_path / "p.npz", x=np.array([[1, 2]], dtype=object), y=np.array([0]))
    with pytest.raises(DatasetError, match=r"p\.npz"):
        load_dataset(tmp_path / "p.npz")
    np.savez(tmp_path / "many.npz", x=np.ones((2, 2)), y=np.array([0, 20_000]))
    with pytest.raises(DatasetError, match="more than 10000 classes"):
        load_dataset(tmp_path / "many.npz")


def test_schema_and_dataset_invariants():
    with pytest.raises(DatasetError, match="modality"):
        Schema("audio", (3,), "float32", ("a",), 1)
    with pytest.raises(DatasetError, match="unique"):
        Schema("tabular", (3,), "float32", ("a", "a"), 1)
    schema = Schema("tabular", (2,), "float32", ("a", "b"), 2)
    with pytest.raises(DatasetError, match="labels must lie in"):
        Dataset(np.zeros((2, 2), np.float32), np.array([0, 2]), schema)
    with pytest.raises(DatasetError, match="features have shape"):
        Dataset(np.zeros((3, 2), np.float32), np.array([0, 1]), schema)


# ------------------------------------------------------------------ CLI and fuzzing


def test_inspect_cli(tmp_path):
    f = write(tmp_path / "a.csv", "x,label\n1,a\n2,b\n")
    ok = subprocess.run([sys.executable, "-m", "sterling.cli", "data", "inspect", str(f), "-f", "json"],
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["rows"] == 2
    assert info["schema"]["classes"] == ["a", "b"]
    bad = write(tmp_path / "b.csv", "x,label\n1\n")
    out = subprocess.run([sys.executable, "-m", "sterling.cli", "data", "inspect", str(bad)],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2
    assert "b.csv: row 2" in out.stderr
    assert "Traceback" not in out.stderr


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".csv", ".npz", ".parquet"]))
def test_random_bytes_load_or_are_refused(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        ds = load_dataset(path)
    except DatasetError as exc:
        message = str(exc)
    else:
        message = str(path) if ds.schema.rows == len(ds.labels) else "inconsistent"
    assert str(path) in message


@FUZZ
@given(st.text(alphabet='0123456789.,-ex\nlabelnaif "', max_size=200))
def test_mutated_csv_text_loads_or_is_refused(tmp_path, body):
    path = tmp_path / "fuzz.csv"
    path.write_text("a,b,label\n" + body)
    try:
        ds = load_dataset(path)
    except DatasetError as exc:
        message = str(exc)
    else:
        message = "fuzz.csv" if np.isfinite(ds.features).all() else "non-finite"
    assert "fuzz.csv" in message


@FUZZ
@given(st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=255))
def test_corrupted_canonical_bytes_are_refused_or_still_valid(tmp_path, position, value):
    raw = bytearray(
        Dataset.from_bytes(
            load_dataset(write(tmp_path / "a.csv", "x,label\n1,a\n2,b\n")).to_bytes()
        ).to_bytes()
    )
    raw[position % len(raw)] = value
    try:
        ds = Dataset.from_bytes(bytes(raw))
    except DatasetError:
        return
    assert ds.schema.rows == len(ds.labels)
