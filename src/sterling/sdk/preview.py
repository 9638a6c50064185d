"""A provider's optional sample preview: a small PNG showing a few rows of the dataset.

A preview reveals those rows in the clear, so it is published only when the provider asks
(`seal_dataset(..., preview_png=render(dataset))`). Images become a grid, a few per class with
the class name above each column; tables become the first rows as text.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from sterling.data.dataset import Dataset

PER_CLASS = 4
MAX_CLASSES_SHOWN = 8
TILE = 80
MAX_ROWS_SHOWN = 8
MAX_COLUMNS_SHOWN = 8


def render(dataset: Dataset, *, seed: int = 0) -> bytes:
    """The preview PNG of `dataset` (a few random rows of each class; the first rows of a table)."""
    image = _images(dataset, seed) if dataset.schema.modality == "image" else _table(dataset)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _to_rgb(row: np.ndarray) -> Image.Image:
    arr = np.asarray(row)
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return Image.fromarray(arr).convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)


def _images(dataset: Dataset, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    classes = dataset.schema.classes[:MAX_CLASSES_SHOWN]
    label_h = 14
    canvas = Image.new("RGB", (len(classes) * (TILE + 4) + 4, label_h + PER_CLASS * (TILE + 4) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(classes):
        rows = np.flatnonzero(dataset.labels == c)
        chosen: list[int] = (
            [int(i) for i in rng.choice(rows, size=min(PER_CLASS, len(rows)), replace=False)]
            if len(rows)
            else []
        )
        x = 4 + c * (TILE + 4)
        draw.text((x, 1), name[:13], fill="black")
        for r, index in enumerate(chosen):
            canvas.paste(_to_rgb(dataset.features[int(index)]), (x, label_h + 4 + r * (TILE + 4)))
    return canvas


def _table(dataset: Dataset) -> Image.Image:
    names = list(dataset.schema.feature_names or [f"x{i}" for i in range(dataset.schema.shape[0])])
    shown = names[:MAX_COLUMNS_SHOWN]
    header = ["label", *shown] + (["…"] if len(names) > len(shown) else [])
    lines = [header]
    for i in range(min(MAX_ROWS_SHOWN, dataset.schema.rows)):
        values = [f"{float(v):.3g}" for v in dataset.features[i][: len(shown)]]
        lines.append([dataset.schema.classes[int(dataset.labels[i])], *values])
    width = 72
    canvas = Image.new("RGB", (len(header) * width + 8, len(lines) * 16 + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for r, cells in enumerate(lines):
        for c, cell in enumerate(cells):
            draw.text((4 + c * width, 4 + r * 16), cell[:11], fill="black" if r else "navy")
    return canvas
