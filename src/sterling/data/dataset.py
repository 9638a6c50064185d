"""The canonical dataset: features, labels and a schema, and its byte encoding.

Whatever a provider imports (a CSV, Parquet, an `.npz`, a folder of images)
becomes one `Dataset`; its canonical bytes (an uncompressed `.npz` holding
`features`, `labels` and the schema as JSON) are what gets encrypted, and
what the enclave decodes. Decoding treats the bytes as untrusted: no pickle,
and every invariant is checked again.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sterling.errors import DatasetError
from sterling.jsontext import MAX_DEPTH, too_deep

MODALITIES = ("tabular", "image")
#: What numpy and zipfile raise on a malformed .npz (found by fuzzing: a bad
#: zip version raises NotImplementedError, bad deflate data zlib.error).
NPZ_ERRORS = (
    ValueError, OSError, EOFError, KeyError, NotImplementedError, RuntimeError,
    zipfile.BadZipFile, zlib.error, struct.error,
)  # fmt: skip
MAX_CLASSES = 10_000
FEATURE_DTYPES = ("float32", "float64", "uint8")


@dataclass(frozen=True)
class Schema:
    """What a buyer may know about a dataset without seeing it."""

    modality: str
    shape: tuple[int, ...]
    dtype: str
    classes: tuple[str, ...]
    rows: int
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.modality not in MODALITIES:
            problems.append(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if not self.shape or any(not isinstance(d, int) or d <= 0 for d in self.shape):
            problems.append(f"shape must be positive integers, got {self.shape}")
        if self.modality == "image" and len(self.shape) not in (2, 3):
            problems.append(f"an image shape is (H, W) or (H, W, C), got {self.shape}")
        if self.modality == "tabular" and len(self.shape) != 1:
            problems.append(f"a tabular shape is (features,), got {self.shape}")
        if self.dtype not in FEATURE_DTYPES:
            problems.append(f"dtype must be one of {', '.join(FEATURE_DTYPES)}, got {self.dtype!r}")
        if not 1 <= len(self.classes) <= MAX_CLASSES:
            problems.append(f"a dataset has 1 to {MAX_CLASSES} classes, got {len(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            problems.append("class names must be unique")
        if not isinstance(self.rows, int) or self.rows <= 0:
            problems.append(f"a dataset has at least one row, got {self.rows}")
        if self.feature_names is not None and len(self.feature_names) != int(np.prod(self.shape)):
            problems.append(
                f"{len(self.feature_names)} feature names for {int(np.prod(self.shape))} features"
            )
        if problems:
            raise DatasetError("invalid schema: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "classes": list(self.classes),
            "rows": self.rows,
            "feature_names": list(self.feature_names) if self.feature_names is not None else None,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Schema:
        if not isinstance(doc, dict):
            raise DatasetError("invalid schema: not a JSON object")
        try:
            names = doc.get("feature_names")
            return cls(
                modality=str(doc["modality"]),
                shape=tuple(int(d) for d in doc["shape"]),
                dtype=str(doc["dtype"]),
                classes=tuple(str(c) for c in doc["classes"]),
                rows=int(doc["rows"]),
                feature_names=tuple(str(n) for n in names) if names is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"invalid schema: {type(exc).__name__}: {exc}") from None


def schema_from_array(schema_raw: np.ndarray, *, source: str) -> Schema:
    """The schema stored in a canonical .npz (its `schema` array: JSON as uint8 bytes)."""
    if schema_raw.dtype != np.uint8 or schema_raw.ndim != 1:
        raise DatasetError(f"{source}: schema array is not JSON bytes")
    if too_deep(schema_raw.tobytes()) is not None:
        raise DatasetError(f"{source}: schema JSON nests deeper than {MAX_DEPTH} levels")
    try:
        doc = json.loads(schema_raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise DatasetError(f"{source}: schema is not valid JSON") from None
    return Schema.from_json(doc)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features of shape (rows, *schema.shape), int64 labels in [0, len(classes))."""

    features: np.ndarray
    labels: np.ndarray
    schema: Schema

    def __post_init__(self) -> None:
        f, y, s = self.features, self.labels, self.schema
        if not isinstance(f, np.ndarray) or not isinstance(y, np.ndarray):
            raise DatasetError("features and labels must be numpy arrays")
        if f.shape != (s.rows, *s.shape):
            raise DatasetError(f"features have shape {f.shape}, the schema says {(s.rows, *s.shape)}")
        if str(f.dtype) != s.dtype:
            raise DatasetError(f"features are {f.dtype}, the schema says {s.dtype}")
        if y.shape != (s.rows,) or y.dtype != np.int64:
            raise DatasetError(f"labels must be int64 of shape ({s.rows},), got {y.dtype} {y.shape}")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= len(s.classes)):
            raise DatasetError(
                f"labels must lie in [0, {len(s.classes)}), got {int(y.min())}..{int(y.max())}"
            )
        if f.dtype.kind == "f" and not np.isfinite(f).all():
            raise DatasetError("features contain NaN or infinite values")

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.schema.classes))
        return {name: int(n) for name, n in zip(self.schema.classes, counts, strict=True)}

    def to_bytes(self) -> bytes:
        """The canonical encoding: an uncompressed .npz of features, labels and the schema."""
        buf = io.BytesIO()
        schema = np.frombuffer(json.dumps(self.schema.to_json(), sort_keys=True).encode(), dtype=np.uint8)
        np.savez(buf, features=self.features, labels=self.labels, schema=schema)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "canonical dataset") -> Dataset:
        """Decode canonical bytes, refusing anything malformed (never unpickles)."""
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                names = set(npz.files)
                if names != {"features", "labels", "schema"}:
                    raise DatasetError(
                        f"{source}: expected arrays features, labels, schema; found {sorted(names)}"
                    )
                features, labels, schema_raw = npz["features"], npz["labels"], npz["schema"]
        except DatasetError:
            raise
        except NPZ_ERRORS as exc:
            raise DatasetError(f"{source}: not a canonical dataset ({type(exc).__name__})") from None
        return cls(features, labels, schema_from_array(schema_raw, source=source))

    def write_canonical(self, path: Path) -> None:
        path.write_bytes(self.to_bytes())
