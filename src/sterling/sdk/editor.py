"""Checking a job as its author types it: parse errors, schema problems and term violations, by line.

`check_text` runs the same verifier as `sterling job verify` on the text of a job (JSON), and
places every problem at the line of the field it concerns, so an editor can mark it there.
Nothing is spent or stored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError

from sterling.chain.marketplace import Marketplace
from sterling.jsontext import MAX_DEPTH, line_column, too_deep
from sterling.privacy.job import Job
from sterling.privacy.plan import TrainingPlan
from sterling.privacy.verifier import Report, Violation, verify
from sterling.sdk.consumer import listing_views


@dataclass
class TextReport:
    """A verifier report about a job's text; `job` is None when the text is not a valid job."""

    job: Job | None
    parse_error: dict[str, Any] | None = None
    violations: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    #: The plan the enclave would execute (None unless the job passes).
    plan: TrainingPlan | None = None

    @property
    def ok(self) -> bool:
        return self.parse_error is None and not self.violations and self.job is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "parse_error": self.parse_error,
            "violations": self.violations,
            "summary": self.summary,
        }


def check_text(market: Marketplace, text: str, *, consumer: str | None) -> TextReport:
    """Parse and verify a job's text against the chain's listings (prices quoted to `consumer`)."""
    deep = too_deep(text)
    if deep is not None:
        line, column = line_column(text, deep)
        message = f"nested deeper than {MAX_DEPTH} levels"
        return TextReport(None, parse_error={"message": message, "line": line, "column": column})
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return TextReport(None, parse_error={"message": exc.msg, "line": exc.lineno, "column": exc.colno})
    try:
        job = Job.model_validate(doc)
    except ValidationError as exc:
        violations = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"]) or None
            message = f"{path}: {err['msg']}" if path else str(err["msg"])
            v = Violation("schema", message, field=path, asked=_json_safe(err.get("input")))
            violations.append(_with_line(v, text))
        return TextReport(None, violations=violations)
    asks = {a.listing_id: a.epsilon for a in job.listings}
    views = listing_views(market, list(asks), consumer=consumer, epsilons=asks)
    report = verify(job, views)
    return from_report(job, report, text)


def from_report(job: Job, report: Report, text: str) -> TextReport:
    return TextReport(
        job,
        violations=[_with_line(v, text) for v in report.violations],
        summary=_wei_strings(report.summary),
        plan=report.plan,
    )


def _with_line(v: Violation, text: str) -> dict[str, Any]:
    return {**asdict(v), "line": field_line(text, v.field) if v.field else None}


def _wei_strings(summary: dict[str, Any]) -> dict[str, Any]:
    """Wei amounts as decimal strings, as the web API writes them; ε stays a float."""
    out = dict(summary)
    for key, value in summary.items():
        if key.endswith("_wei") and isinstance(value, int):
            out[key] = str(value)
        elif key.endswith("_wei") and isinstance(value, dict):
            out[key] = {k: str(v) for k, v in value.items()}
    if "price_total_wei" in out:
        out["total_price_wei"] = out["price_total_wei"]
    return out


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


# --------------------------------------------------------------------- locating fields
# The standard json module keeps no positions, so this is a small scanner of its own: it walks
# the text once (linear in its size; a 64 KiB job takes well under a millisecond) recording where
# each value starts. It is used only on text json.loads has accepted.


def field_line(text: str, path: str) -> int | None:
    """The 1-based line where the field at dotted `path` (``listings.0.epsilon``) starts in JSON `text`.

    A path segment that is not in the text (pydantic inserts a union's tag, e.g.
    ``model.layers.3.linear.out``) is skipped; if the field itself is absent (a required field
    left out), the line of the nearest enclosing field that is present is returned. None when
    the text is not JSON or not even the first segment is present.

    >>> field_line('{\\n "a": {\\n  "b": [1,\\n   2]\\n }\\n}', "a.b.1")
    4
    """
    try:
        positions = _positions(text)
    except (ValueError, IndexError):
        return None
    parts = [p for p in path.split(".") if p]
    found: tuple[str, ...] | None = None
    current: tuple[str, ...] = ()
    i = 0
    while i < len(parts):
        candidate = (*current, parts[i])
        if candidate in positions:
            current = candidate
            found = current
        elif not (i + 1 < len(parts) and (*current, parts[i + 1]) in positions):
            break
        i += 1
    if found is None:
        return None
    return text.count("\n", 0, positions[found]) + 1


def _positions(text: str) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    decoder = json.JSONDecoder()
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def value(i: int, path: tuple[str, ...], start: int) -> int:
        i = skip(i)
        out[path] = start if start >= 0 else i
        ch = text[i]
        if ch == "{":
            i = skip(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                key_start = i
                key, i = decoder.raw_decode(text, i)
                i = skip(i)
                if text[i] != ":":
                    raise ValueError("expected ':'")
                i = value(i + 1, (*path, str(key)), key_start)
                i = skip(i)
                if text[i] == ",":
                    i = skip(i + 1)
                    continue
                if text[i] == "}":
                    return i + 1
                raise ValueError("expected ',' or '}'")
        if ch == "[":
            i = skip(i + 1)
            if text[i] == "]":
                return i + 1
            k = 0
            while True:
                i = value(i, (*path, str(k)), -1)
                k += 1
                i = skip(i)
                if text[i] == ",":
                    i += 1
                    continue
                if text[i] == "]":
                    return i + 1
                raise ValueError("expected ',' or ']'")
        _, end = decoder.raw_decode(text, i)
        return int(end)

    value(0, (), -1)
    return out
