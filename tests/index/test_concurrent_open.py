"""Several processes opening one fresh SQLite index at once (a CLI command beside `sterling serve`)
all get a migrated index: the migrations run once, under the index's lock, not side by side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

OPEN = """
import sys
from sterling.index import MarketIndex
MarketIndex.open(sys.argv[1]).close()
"""


def test_processes_opening_a_fresh_index_at_once_all_succeed(tmp_path: Path) -> None:
    for attempt in range(3):  # three fresh files: a race shows in one of them if the lock is missing
        url = f"sqlite:///{tmp_path / f'index-{attempt}.sqlite'}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        outcomes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
        failed = [err for code, err in outcomes if code != 0]
        assert not failed, failed[0][-600:]
        tables = set(inspect(create_engine(url)).get_table_names())
        assert {"listings", "events", "allocations", "alembic_version"} <= tables
