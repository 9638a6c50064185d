"""Importing a provider's files into the canonical `Dataset`.

`load_dataset(path)` reads an `.npz`, a CSV, a Parquet file, or a folder with
one sub-folder of images per class. Anything malformed is refused with a
`DatasetError` that names the file, the row or image, and the problem.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from sterling.data.dataset import MAX_CLASSES, NPZ_ERRORS, Dataset, Schema
from sterling.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_MAX_BYTES = 4 << 30
NPZ_PAIRS = (("features", "labels"), ("x", "y"), ("X", "y"), ("train_images", "train_labels"))


def load_dataset(path: Path, *, label_column: str = "label", max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """Import `path` (.npz, .csv, .parquet, or a folder of class folders of images)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_image_folder(path, max_bytes)
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(f"{path}: the file is empty")
    if size > max_bytes:
        raise DatasetError(f"{path}: {size} bytes is above the {max_bytes}-byte limit")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".csv":
        return _load_csv(path, label_column)
    if suffix in (".parquet", ".pq"):
        return _load_parquet(path, label_column)
    raise DatasetError(
        f"{path}: unknown dataset format {suffix or '(no extension)'}; use .npz, .csv, .parquet or a folder"
    )


def inspect(path: Path, *, label_column: str = "label") -> dict[str, Any]:
    """The schema, row count and class counts of `path`, changing nothing."""
    ds = load_dataset(path, label_column=label_column)
    size = (
        sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
        if Path(path).is_dir()
        else Path(path).stat().st_size
    )
    return {
        "path": str(path),
        "bytes": size,
        "rows": ds.schema.rows,
        "schema": ds.schema.to_json(),
        "class_counts": ds.class_counts(),
    }


# ------------------------------------------------------------------ labels


def _encode_labels(raw: list[Any] | np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as int64 indices and class names: integers ≥ 0 keep their value; anything else sorts."""
    arr = np.asarray(raw)
    if arr.size == 0:
        raise DatasetError(f"{where}: no rows")
    if arr.dtype.kind in "iu" and int(arr.min()) >= 0:
        top = int(arr.max())
        if top >= MAX_CLASSES:
            raise DatasetError(f"{where}: label {top} means more than {MAX_CLASSES} classes")
        return arr.astype(np.int64), tuple(str(i) for i in range(top + 1))
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.equal(np.mod(arr, 1), 0).all():
            bad = int(np.flatnonzero(~np.isfinite(arr) | (np.mod(arr, 1) != 0))[0])
            raise DatasetError(f"{where}: row {bad + 1}: label {arr[bad]} is not a class")
        return _encode_labels(arr.astype(np.int64), where)
    names = sorted({str(v) for v in arr.tolist()})
    if len(names) > MAX_CLASSES:
        raise DatasetError(f"{where}: {len(names)} distinct labels is more than {MAX_CLASSES} classes")
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[str(v)] for v in arr.tolist()], dtype=np.int64), tuple(names)


def _tabular(path: Path, features: np.ndarray, labels_raw: Any, names: list[str] | None) -> Dataset:
    labels, classes = _encode_labels(labels_raw, str(path))
    if not np.isfinite(features).all():
        row, col = (int(v) for v in np.argwhere(~np.isfinite(features))[0])
        column = names[col] if names else str(col)
        raise DatasetError(f"{path}: row {row + 1}, column {column}: NaN or infinite value")
    rows, width = features.shape
    schema = Schema("tabular", (width,), "float32", classes, rows, tuple(names) if names else None)
    return Dataset(features.astype(np.float32), labels, schema)


# -------------------------------------------------------------------- csv


def _load_csv(path: Path, label_column: str) -> Dataset:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise DatasetError(f"{path}: no header row")
            header = [h.strip() for h in header]
            if label_column not in header:
                raise DatasetError(
                    f"{path}: no label column {label_column!r}; columns are {', '.join(header)}"
                )
            li = header.index(label_column)
            names = [h for i, h in enumerate(header) if i != li]
            if not names:
                raise DatasetError(f"{path}: no feature columns beside {label_column!r}")
            rows: list[list[float]] = []
            labels: list[str] = []
            for n, record in enumerate(reader, start=2):
                if not record or all(not c.strip() for c in record):
                    continue
                if len(record) != len(header):
                    raise DatasetError(f"{path}: row {n}: expected {len(header)} columns, got {len(record)}")
                label = record[li].strip()
                if not label:
                    raise DatasetError(f"{path}: row {n}: missing label")
                values = []
                for i, cell in enumerate(record):
                    if i == li:
                        continue
                    try:
                        v = float(cell)
                    except ValueError:
                        raise DatasetError(
                            f"{path}: row {n}, column {header[i]}: {cell!r} is not a number"
                        ) from None
                    if not math.isfinite(v):
                        raise DatasetError(f"{path}: row {n}, column {header[i]}: NaN or infinite value")
                    values.append(v)
                rows.append(values)
                labels.append(label)
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV: {exc}") from None
    if not rows:
        raise DatasetError(f"{path}: no data rows")
    label_values: list[Any] = labels
    if all(lab.lstrip("-").isdigit() for lab in labels):
        label_values = [int(lab) for lab in labels]
    return _tabular(path, np.array(rows, dtype=np.float64), np.array(label_values), names)


# ---------------------------------------------------------------- parquet


def _load_parquet(path: Path, label_column: str) -> Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    columns = list(table.column_names)
    if label_column not in columns:
        raise DatasetError(f"{path}: no label column {label_column!r}; columns are {', '.join(columns)}")
    if table.num_rows == 0:
        raise DatasetError(f"{path}: no data rows")
    names = [c for c in columns if c != label_column]
    if not names:
        raise DatasetError(f"{path}: no feature columns beside {label_column!r}")
    cols = []
    for name in [label_column, *names]:
        col = table.column(name)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]) + 1
            what = "missing label" if name == label_column else f"column {name}: missing value"
            raise DatasetError(f"{path}: row {row}: {what}")
        if name != label_column and not (
            pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
        ):
            raise DatasetError(f"{path}: column {name} has type {col.type}; features must be numeric")
        cols.append(col.to_numpy(zero_copy_only=False))
    features = np.stack([c.astype(np.float64) for c in cols[1:]], axis=1)
    return _tabular(path, features, cols[0], names)


# -------------------------------------------------------------------- npz


def _load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = set(npz.files)
            if files == {"features", "labels", "schema"}:
                return Dataset.from_bytes(path.read_bytes(), source=str(path))
            for fx, fy in NPZ_PAIRS:
                if fx in files and fy in files:
                    x, y = npz[fx], npz[fy]
                    break
            else:
                raise DatasetError(
                    f"{path}: no known arrays (features/labels, x/y, X/y, train_images/train_labels); "
                    f"found {', '.join(sorted(files)) or 'none'}"
                )
    except DatasetError:
        raise
    except NPZ_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    if x.ndim == 0 or y.ndim == 0:  # found by fuzzing: len() of a 0-d array raised TypeError
        raise DatasetError(
            f"{path}: features and labels must be arrays of rows, got shapes {x.shape} and {y.shape}"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(f"{path}: labels must be one per row, got shape {y.shape}")
    if len(x) != len(y):
        raise DatasetError(f"{path}: {len(x)} feature rows but {len(y)} labels")
    if len(x) == 0:
        raise DatasetError(f"{path}: no rows")
    if y.dtype.kind not in "iufUSb":
        raise DatasetError(f"{path}: labels of type {y.dtype} are not classes")
    if x.ndim == 2:
        if x.dtype.kind not in "iufb":
            raise DatasetError(f"{path}: features of type {x.dtype} are not numeric")
        return _tabular(path, x.astype(np.float64), y, None)
    if x.ndim in (3, 4):
        if x.ndim == 4 and x.shape[-1] not in (1, 3, 4):
            raise DatasetError(f"{path}: images must have 1, 3 or 4 channels, got {x.shape[-1]}")
        if x.dtype == np.uint8:
            feats = x
        elif x.dtype.kind == "f":
            if not np.isfinite(x).all():
                raise DatasetError(
                    f"{path}: image {int(np.argwhere(~np.isfinite(x))[0][0])}: NaN or infinite pixel"
                )
            feats = x.astype(np.float32)
        else:
            raise DatasetError(f"{path}: images of type {x.dtype}; use uint8 or float")
        labels, classes = _encode_labels(y, str(path))
        schema = Schema(
            "image", tuple(int(d) for d in feats.shape[1:]), str(feats.dtype), classes, len(feats)
        )
        return Dataset(np.ascontiguousarray(feats), labels, schema)
    raise DatasetError(f"{path}: features of shape {x.shape}: expected (rows, features) or (rows, H, W[, C])")


# ----------------------------------------------------------------- images


def _load_image_folder(root: Path, max_bytes: int) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders (expected one sub-folder of images per class)")
    if len(class_dirs) > MAX_CLASSES:
        raise DatasetError(f"{root}: {len(class_dirs)} class folders is more than {MAX_CLASSES}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    size: tuple[int, int] | None = None
    first = ""
    total = 0
    for index, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{folder}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            total += file.stat().st_size
            if total > max_bytes:
                raise DatasetError(f"{root}: images add up to more than the {max_bytes}-byte limit")
            try:
                with Image.open(file) as im:
                    rgb = im.convert("RGB")
                    rgb.load()
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DatasetError(f"{file}: unreadable image ({type(exc).__name__})") from None
            if size is None:
                size, first = rgb.size, str(file)
            elif rgb.size != size:
                raise DatasetError(
                    f"{file}: image is {rgb.size[0]}x{rgb.size[1]}, but {first} is {size[0]}x{size[1]}"
                )
            images.append(np.asarray(rgb, dtype=np.uint8))
            labels.append(index)
    feats = np.stack(images)
    schema = Schema(
        "image",
        tuple(int(d) for d in feats.shape[1:]),
        "uint8",
        tuple(p.name for p in class_dirs),
        len(feats),
    )
    return Dataset(feats, np.array(labels, dtype=np.int64), schema)
