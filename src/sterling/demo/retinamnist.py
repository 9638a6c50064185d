"""MedMNIST's RetinaMNIST, the real data of the retinopathy demo, read from a file the user gives.

RetinaMNIST (MedMNIST v2, from the DeepDRiD challenge) holds 1,600 colour
fundus photographs graded 0 (no DR) to 4 (proliferative DR), split 1,080 /
120 / 400, at 28×28 in `retinamnist.npz` and at 64, 128 and 224 pixels in
`retinamnist_64.npz` and so on. Nothing here fetches anything: a missing
file is refused with `MISSING_HINT`, which says where to get it. Everything
in the file is checked before it becomes a `Dataset`, and a refusal names
the file, the array and the problem.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from sterling.data.dataset import NPZ_ERRORS, Dataset, Schema
from sterling.errors import DatasetError

#: The five grades of the international clinical DR scale; a label is its grade's index.
#: (NPDR: non-proliferative diabetic retinopathy.)
GRADES = ("no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "proliferative DR")
SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)
MISSING_HINT = (
    "RetinaMNIST is not bundled with Sterling; get it from the official MedMNIST release "
    "(https://zenodo.org/records/10519652, retinamnist.npz, CC BY 4.0) and pass it with --data PATH"
)


def load_retinamnist(path: Path, *, split: str = "all", size: int | None = None) -> Dataset:
    """One split of RetinaMNIST (train, val or test), or all three in that order.

    `size`, if given, is the image size the caller expects; a file of another
    size is refused rather than resized.
    """
    if split != "all" and split not in SPLITS:
        raise DatasetError(f"unknown RetinaMNIST split {split!r}; one of all, {', '.join(SPLITS)}")
    parts = _read(Path(path), SPLITS if split == "all" else (split,), size)
    return _concat([parts[s] for s in parts])


def retinamnist_splits(path: Path, *, size: int | None = None) -> dict[str, Dataset]:
    """The train, val and test splits of RetinaMNIST, read and checked once."""
    parts = _read(Path(path), SPLITS, size)
    return {s: _concat([parts[s]]) for s in SPLITS}


def _read(path: Path, splits: tuple[str, ...], size: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not path.exists():
        raise DatasetError(f"{path}: no such file. {MISSING_HINT}")
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, not retinamnist.npz")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not an .npz file (an .npz is a zip archive of arrays)")
    wanted = [f"{s}_{kind}" for s in splits for kind in ("images", "labels")]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [
                f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in npz
            ]
            if missing:
                raise DatasetError(
                    f"{path}: not a RetinaMNIST file: missing arrays {', '.join(missing)} "
                    f"(found {', '.join(sorted(npz.files)) or 'none'})"
                )
            arrays = {name: npz[name] for name in wanted}
    except DatasetError:
        raise
    except NPZ_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    side: int | None = None
    for s in splits:
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        where = f"{path}: {s}_images"
        if images.dtype != np.uint8:
            raise DatasetError(f"{where}: images are {images.dtype}; RetinaMNIST's are uint8")
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise DatasetError(f"{where}: shape {images.shape}; expected (n, s, s, 3) colour images")
        if images.shape[1] not in SIZES:
            raise DatasetError(
                f"{where}: {images.shape[1]}×{images.shape[1]} images; RetinaMNIST comes in "
                f"{', '.join(map(str, SIZES))} pixels"
            )
        if side is not None and images.shape[1] != side:
            raise DatasetError(f"{where}: {images.shape[1]}-pixel images, but the other splits are {side}")
        side = images.shape[1]
        if size is not None and side != size:
            raise DatasetError(
                f"{where}: the file holds {side}×{side} images, {size}×{size} were asked for; "
                f"MedMNIST publishes each size as its own file (retinamnist_{size}.npz)"
            )
        _check_labels(f"{path}: {s}_labels", labels, len(images))
        out[s] = (images, labels.reshape(-1).astype(np.int64))
    return out


def _check_labels(where: str, labels: np.ndarray, rows: int) -> None:
    if labels.dtype.kind not in "iu":
        raise DatasetError(f"{where}: labels are {labels.dtype}; expected integer grades")
    if labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[1] != 1):
        raise DatasetError(f"{where}: shape {labels.shape}; expected (n, 1) or (n,)")
    if len(labels) != rows:
        raise DatasetError(f"{where}: {len(labels)} labels for {rows} images")
    if rows == 0:
        raise DatasetError(f"{where}: the split is empty")
    flat = labels.reshape(-1)
    bad = np.flatnonzero((flat < 0) | (flat >= len(GRADES)))
    if bad.size:
        raise DatasetError(
            f"{where}: row {int(bad[0]) + 1} has grade {int(flat[bad[0]])}; grades are 0..{len(GRADES) - 1}"
            f" ({bad.size} rows out of range)"
        )


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> Dataset:
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    schema = Schema("image", tuple(int(d) for d in images.shape[1:]), "uint8", GRADES, len(images))
    return Dataset(images, labels, schema)
