"""How deeply JSON text nests, measured without parsing it, so outside JSON is refused before parsing.

py_ecc (imported with the chain code) raises Python's recursion limit to 100 000, which turns off
the guard that stops the standard `json` parser from recursing past the C stack: about 60 000
nested brackets then crash the whole process with a segmentation fault (found by fuzzing the
web API and the CLI). Every Sterling document nests a few levels, so JSON from outside that
nests deeper than `MAX_DEPTH` is refused, by the caller, with its own kind of error.
"""

from __future__ import annotations

import re

#: Deeper than any Sterling document (a job nests 5 levels) and than pydantic serializes (about 250).
MAX_DEPTH = 64

# A string, or an unterminated one to the end of the text (possessive, so never quadratic), or a bracket.
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*+(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


def too_deep(text: str | bytes, max_depth: int = MAX_DEPTH) -> int | None:
    """The offset of the first bracket nested deeper than `max_depth` in `text`, or None.

    Linear in the text and never recursive; strings are skipped. On text that is not JSON the
    answer may be an over-count, which only refuses text the parser would refuse anyway.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", "replace")
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                return match.start()
        elif token in "]}":
            depth -= 1
    return None


def line_column(text: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column of `offset` in `text`, as `json.JSONDecodeError` gives them."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1
