"""`sterling bench NAME`: run one benchmark script from `benchmarks/`.

Each script in `benchmarks/` defines `run(quick: bool) -> dict` (figures from
one run, side by side, with their ratios) and may define `table(result)` to
render them for people. `--format json` prints the dict as one JSON line.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.table import Table

from sterling.cli.common import Format, FormatOpt, console, emit_json
from sterling.config import PROJECT_ROOT
from sterling.errors import UsageError

BENCH_DIR = PROJECT_ROOT / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def load(name: str) -> ModuleType:
    path = BENCH_DIR / f"{name}.py"
    if not path.is_file():
        names = ", ".join(available()) or "none (is this a checkout of Sterling?)"
        raise UsageError(f"no benchmark named {name!r}; available: {names}")
    spec = importlib.util.spec_from_file_location(f"sterling_bench_{name}", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load benchmark {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as `import` does: dataclasses (and pickling) look their module up there.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _flat_table(result: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            table.add_row(prefix, f"{value:.4g}" if isinstance(value, float) else str(value))

    walk("", result)
    return table


def bench(
    name: Annotated[
        str, typer.Argument(help="Benchmark to run (a script in benchmarks/); `list` lists them.")
    ],
    fmt: FormatOpt = Format.text,
    quick: Annotated[bool, typer.Option("--quick", help="A smaller run, for smoke tests.")] = False,
    listings: Annotated[
        int | None, typer.Option("--listings", help="Listings to publish (benchmarks that take it).")
    ] = None,
    events: Annotated[
        int | None, typer.Option("--events", help="Events to reach on chain (benchmarks that take it).")
    ] = None,
    rows: Annotated[
        int | None, typer.Option("--rows", help="Rows of data to train on (benchmarks that take it).")
    ] = None,
) -> None:
    """Run a benchmark and print its figures side by side (`--format json` for scripts)."""
    if name == "list":
        for n in available():
            console.print(n)
        return
    module = load(name)
    sizes = {k: v for k, v in {"listings": listings, "events": events, "rows": rows}.items() if v is not None}
    takes = inspect.signature(module.run).parameters
    unknown = [f"--{k}" for k in sizes if k not in takes]
    if unknown:
        raise UsageError(f"benchmark {name!r} does not take {', '.join(unknown)}")
    result: dict[str, Any] = module.run(quick=quick, **sizes)
    if fmt is Format.json:
        emit_json(result)
        return
    render = getattr(module, "table", None)
    console.print(render(result) if render else _flat_table(result, f"benchmark: {name}"))
