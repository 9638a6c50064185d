"""Engines and migrations: SQLite (WAL) by default, PostgreSQL (psycopg 3) through a URL.

Migrations ship in the package (`sterling/index/migrations`) and run to head through Alembic's
API on every open, so an index needs no set-up and an older one is upgraded in place.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from sterling.errors import ConfigError, UsageError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DIALECTS = ("sqlite", "postgresql")


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; UsageError naming what is wrong with it otherwise."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(f"the index URL {url!r} is not a database URL: {exc}") from None
    if parsed.get_backend_name() not in DIALECTS:
        raise UsageError(
            f"the index database must be SQLite or PostgreSQL, got {parsed.get_backend_name()!r}"
        )
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


#: The PostgreSQL advisory lock that serialises migrations and syncs of one index database.
_PG_LOCK = 0x5374726C  # "Strl"


@contextmanager
def exclusive(engine: Engine) -> Iterator[None]:
    """Hold the index database for writing against every other process: migrating or syncing at
    once from two processes (a CLI command beside `sterling serve`, say) would create the same
    tables or apply the same blocks twice. SQLite: a lock file beside the database (flock);
    PostgreSQL: a session advisory lock; an in-memory SQLite database is one process's own."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK})
            conn.commit()


def migrate(engine: Engine) -> None:
    """Run the packaged migrations to head (nothing to do on an up-to-date index)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with exclusive(engine), engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise ConfigError(f"cannot open the index database {engine.url!r}: {exc.orig}") from None
