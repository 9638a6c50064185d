"""What the fuzz tests share: settings from the profile, the refusal check, and structure-aware mutations.

A mutation takes a valid document and breaks it the way outside input breaks: a field removed,
a value of the wrong type, a huge or non-finite number, odd unicode, an unknown key, deep nesting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st

T = TypeVar("T")
SCALE = max(1, int(os.environ.get("STERLING_FUZZ_SCALE", "1")))


def fuzz(examples: int, **overrides: Any) -> settings:
    """The `sterling-fuzz` profile with `examples` examples (times STERLING_FUZZ_SCALE)."""
    return settings(settings.get_profile("sterling-fuzz"), max_examples=examples * SCALE, **overrides)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its content, to check that a refusal wrote nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


#: Values outside input puts where a field should be.
ODD_NUMBERS = st.sampled_from(
    [
        0,
        -1,
        1,
        2**31,
        2**63,
        2**256,
        -(2**255),
        10**80,
        0.5,
        -0.0,
        1e-300,
        1e308,
        math.inf,
        -math.inf,
        math.nan,
    ]
)
ODD_TEXT = st.sampled_from(
    ["", " ", "x" * 300, "\u202e", "é", "名前", "🦀", "\x00", "0x", "1", "null", "NaN", "[]", "{}", "\ud800"]
)
ODD_VALUES = st.one_of(
    ODD_NUMBERS,
    ODD_TEXT,
    st.sampled_from([None, True, False, [], {}, [1, 2], {"a": 1}, [[[[[]]]]]]),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += paths(value, (*prefix, i))
    return out


def _copy(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_copy(v) for v in doc]
    return doc


@st.composite
def mutated(
    draw: st.DrawFn, doc: Any, *, values: st.SearchStrategy[Any] = ODD_VALUES
) -> tuple[Any, list[tuple[Any, ...]]]:
    """`doc` broken once or a few times; also returns the paths broken."""
    doc = _copy(doc)
    broken: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 3))):
        where = paths(doc)
        if not where:
            break
        path = draw(st.sampled_from(where))
        broken.append(path)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        how = draw(st.sampled_from(["remove", "replace", "replace", "unknown key", "wrap", "nest"]))
        if how == "remove":
            del parent[key]
        elif how == "replace":
            parent[key] = draw(values)
        elif how == "unknown key" and isinstance(parent, dict):
            extra = draw(st.sampled_from(["extra", "__proto__", "é", ""]))
            parent[extra] = draw(values)
            broken.append((*path[:-1], extra))
        elif how == "wrap":
            parent[key] = [parent[key]]
        else:
            value: Any = parent[key]
            for _ in range(draw(st.sampled_from([2, 70, 300]))):
                value = [value]
            parent[key] = value
    return doc, broken


E = TypeVar("E", bound=BaseException)


def outcome(fn: Callable[[], T], *refusals: type[E]) -> T | E:
    """`fn()`'s value, or the exception of one of the `refusals` types it raised (others propagate)."""
    try:
        return fn()
    except refusals as exc:
        return exc


#: One tabular listing as `sterling job verify --listings` reads it (and `views_from_json` parses).
LISTINGS: list[dict[str, Any]] = [
    {
        "listing_id": 1,
        "schema": {
            "modality": "tabular",
            "shape": [6],
            "dtype": "float32",
            "classes": ["a", "b"],
            "rows": 100,
        },
        "max_epsilon_per_job": 2,
        "remaining_epsilon": 5,
        "delta": 1e-5,
        "price_per_job_wei": 10,
        "price_per_epsilon_wei": 10,
    }
]
