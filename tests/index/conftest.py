"""Fixtures for the index tests: a real chain with a deployed market, and the index's database.

`index_url` runs every test that uses it twice: on the embedded default (SQLite, in the test's
folder) and on a real PostgreSQL 15 server (Debian's), started once on a free loopback port in a
temporary folder owned by the `postgres` user, with a fresh database per test, stopped at the end.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from indexworld import World

from sterling.chain import node
from sterling.chain.node import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
_databases = itertools.count(1)


def _as_postgres(*args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 (trust auth for the local `postgres` role); its base URL."""
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / b).exists()]
    if missing:
        pytest.fail(
            f"PostgreSQL 15 is missing ({', '.join(missing)} not in {PG_BIN}): `make setup` installs it"
        )
    root = Path(tempfile.mkdtemp(prefix="sterling-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = free_port()
    subprocess.run(
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -k {root} -c fsync=off"
    subprocess.run(
        _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _fresh_database(base: str) -> str:
    import psycopg

    name = f"index_test_{next(_databases)}"
    with psycopg.connect(
        base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return _fresh_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    chain = node.embedded()
    yield World.deploy(chain, tmp_path)
    chain.close()


@pytest.fixture
def anvil_world(tmp_path: Path, anvil_binary: Path) -> Iterator[World]:
    chain = node.start_anvil(anvil_binary)
    yield World.deploy(chain, tmp_path)
    chain.close()
