"""docs/threat-model.md names a test for every guarantee: each one it names must exist.

This keeps the page true as tests are renamed or removed: a guarantee whose
test is gone fails CI here rather than going stale on the page.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
DOC = TESTS.parent / "docs" / "threat-model.md"
#: `folder/test_file.py` or `folder/test_file.py::test_name` (optionally `[param]`), in backticks.
REFERENCE = re.compile(r"`([a-z_]+/test_[a-z0-9_]+\.py)(?:::(test_[A-Za-z0-9_]+)(?:\[[^`\]]*\])?)?`")


def _references() -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in REFERENCE.finditer(DOC.read_text(encoding="utf-8"))]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def test_the_page_names_tests_for_each_section():
    refs = _references()
    assert len(refs) >= 30, f"only {len(refs)} test references found in {DOC}"
    folders = {file.split("/")[0] for file, _ in refs}
    assert {"security", "contracts", "integration", "unit"} <= folders


def test_every_test_the_threat_model_names_exists():
    missing = []
    for file, name in _references():
        path = TESTS / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
        elif name is not None and name not in _test_names(path):
            missing.append(f"{file}::{name} (no such test)")
    assert not missing, "docs/threat-model.md names tests that do not exist:\n" + "\n".join(missing)
