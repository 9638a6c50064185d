"""RetinaMNIST: the real file loads with its published counts; every malformed file is refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sterling.demo.retinamnist import GRADES, MISSING_HINT, load_retinamnist, retinamnist_splits
from sterling.errors import DatasetError

RETINA = Path(__file__).resolve().parents[3] / "shared" / "data" / "retinamnist.npz"
COUNTS = {"train": 1080, "val": 120, "test": 400}


def fake(path: Path, *, size: int = 28, counts: tuple[int, int, int] = (6, 2, 3), **override: object) -> Path:
    """A small file laid out as MedMNIST's, with any array replaced or (given None) left out."""
    rng = np.random.default_rng(0)
    arrays: dict[str, object] = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 5).astype(np.uint8).reshape(n, 1)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})  # type: ignore[arg-type]
    return path


# ------------------------------------------------------------------ the real file


@pytest.fixture
def retina() -> Path:
    if not RETINA.exists():
        pytest.skip(MISSING_HINT)
    return RETINA


def test_real_splits_have_the_published_counts(retina):
    splits = retinamnist_splits(retina)
    assert list(splits) == ["train", "val", "test"]
    for name, ds in splits.items():
        assert ds.schema.rows == COUNTS[name]
        assert ds.features.shape == (COUNTS[name], 28, 28, 3)
        assert (ds.features.dtype, ds.labels.dtype) == (np.uint8, np.int64)
        assert (ds.schema.classes, ds.schema.modality) == (GRADES, "image")
        assert set(np.unique(ds.labels)) == {0, 1, 2, 3, 4}


def test_real_single_split_and_all(retina):
    test = load_retinamnist(retina, split="test", size=28)
    assert test.schema.rows == 400
    both = load_retinamnist(retina)
    assert both.schema.rows == sum(COUNTS.values())
    np.testing.assert_array_equal(both.features[-400:], test.features)
    # the train split's class balance, which the synthetic generator imitates
    assert list(load_retinamnist(retina, split="train").class_counts().values()) == [486, 128, 206, 194, 66]


def test_real_file_refuses_another_size(retina):
    with pytest.raises(DatasetError, match=r"28×28 images, 64×64 were asked for.*retinamnist_64\.npz"):
        load_retinamnist(retina, size=64)


# ------------------------------------------------------------------ files built here


def test_fake_file_loads_every_size(tmp_path):
    for size in (28, 64):
        ds = load_retinamnist(fake(tmp_path / f"r{size}.npz", size=size), split="train", size=size)
        assert ds.features.shape == (6, size, size, 3)
        assert ds.labels.tolist() == [0, 1, 2, 3, 4, 0]


def test_labels_of_shape_n_are_accepted(tmp_path):
    path = fake(tmp_path / "r.npz", val_labels=np.array([1, 4], dtype=np.int64))
    assert load_retinamnist(path, split="val").labels.tolist() == [1, 4]


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="no such file") as err:
        load_retinamnist(tmp_path / "retinamnist.npz")
    assert "zenodo.org/records/10519652" in str(err.value)
    assert "--data PATH" in str(err.value)
    assert str(tmp_path / "retinamnist.npz") in str(err.value)


def test_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "retinamnist.npz"
    path.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DatasetError, match=r"retinamnist\.npz: not an \.npz file"):
        load_retinamnist(path)


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="is a folder"):
        load_retinamnist(tmp_path)


def test_missing_arrays_are_named(tmp_path):
    path = fake(tmp_path / "r.npz", val_labels=None, test_images=None)
    with pytest.raises(DatasetError, match="missing arrays val_labels, test_images"):
        load_retinamnist(path, split="train")


def test_an_unrelated_npz_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(DatasetError, match=r"not a RetinaMNIST file.*found x"):
        load_retinamnist(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train_images": np.zeros((6, 28, 28, 3), np.float32)}, "train_images: images are float32"),
        ({"train_images": np.zeros((6, 28, 28), np.uint8)}, r"shape \(6, 28, 28\); expected \(n, s, s, 3\)"),
        ({"train_images": np.zeros((6, 28, 20, 3), np.uint8)}, r"shape \(6, 28, 20, 3\)"),
        ({"train_images": np.zeros((6, 30, 30, 3), np.uint8)}, "30×30 images; RetinaMNIST comes in 28, 64"),
        ({"test_images": np.zeros((3, 64, 64, 3), np.uint8)}, "test_images: 64-pixel images, but the other"),
        ({"train_labels": np.zeros((6, 1), np.float32)}, "train_labels: labels are float32"),
        ({"train_labels": np.zeros((6, 2), np.uint8)}, r"train_labels: shape \(6, 2\)"),
        ({"val_labels": np.array([[1], [5]], np.uint8)}, "val_labels: row 2 has grade 5; grades are 0..4"),
        ({"val_labels": np.array([[-1], [0]], np.int64)}, "val_labels: row 1 has grade -1"),
        ({"train_labels": np.zeros((5, 1), np.uint8)}, "train_labels: 5 labels for 6 images"),
        (
            {"train_images": np.zeros((0, 28, 28, 3), np.uint8), "train_labels": np.zeros((0, 1), np.uint8)},
            "train_labels: the split is empty",
        ),
    ],
)
def test_malformed_arrays_are_refused_by_name(tmp_path, override, message):
    path = fake(tmp_path / "bad.npz", **override)
    with pytest.raises(DatasetError, match=message) as err:
        load_retinamnist(path)
    assert str(path) in str(err.value)


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="unknown RetinaMNIST split 'dev'"):
        load_retinamnist(fake(tmp_path / "r.npz"), split="dev")


def test_requested_size_must_match(tmp_path):
    with pytest.raises(DatasetError, match="64×64 images, 128×128 were asked for"):
        retinamnist_splits(fake(tmp_path / "r.npz", size=64), size=128)
