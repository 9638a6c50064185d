"""Checking a provider contract before publishing it: the sandbox's static checks and a compile.

The same checks the enclave applies when it runs the contract, so a provider learns at once, and
all together, what would make it fail; nothing is stored.
"""

from __future__ import annotations

import re

from sterling.enclave.sandbox import Sandbox, check_source
from sterling.errors import ContractError

_PROBE = "_compile_probe_"


def contract_problems(source: str, *, sandbox: Sandbox | None = None) -> list[str]:
    """Every problem in a provider contract: forbidden imports and names (each with its line), a
    missing ``check(request)``, and what MicroPython says when it compiles and loads the source."""
    try:
        tree = check_source(source)
    except ContractError as exc:
        text = str(exc).removeprefix(f"contract {exc.kind}: ")
        if exc.kind == "forbidden":  # check_source joins its problems with "; ", each starting "line N:"
            return re.split(r"; (?=line \d+:)", text)
        return [f"{exc.kind}: {text}"]
    problems = []
    if not any(getattr(node, "name", None) == "check" for node in tree.body):
        problems.append("the contract defines no top-level function check(request)")
    try:
        (sandbox or Sandbox()).call(source + f"\n\ndef {_PROBE}(_):\n    return True\n", _PROBE, None)
    except ContractError as exc:
        problems.append(str(exc))
    return problems
