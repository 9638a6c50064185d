"""`MarketIndex`: one database that follows one Marketplace, and the pages read from it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from sterling.chain.marketplace import Marketplace
from sterling.errors import UsageError
from sterling.index import queries
from sterling.index.db import exclusive, make_engine, migrate
from sterling.index.follow import Follower, SyncReport
from sterling.index.models import SYNC, EventRecord, JobRecord, ListingRecord, ManifestRecord, table


def default_url(home: Path, chain_id: int, marketplace: str) -> str:
    """The embedded default: one SQLite file per chain and deployment in Sterling's home."""
    return f"sqlite:///{home / f'index-{chain_id}-{marketplace.lower()}.sqlite'}"


class MarketIndex:
    """Listings, budgets, jobs, enclaves and events of one deployment, kept in a database.

    `open` with a URL connects (and migrates) at once; without one, the SQLite file is chosen
    at the first `sync`, once the chain id and the Marketplace's address are known. Syncs are
    serialised; reads run concurrently.
    """

    def __init__(self, url: str | None, home: Path | None, *, range_blocks: int | None = None) -> None:
        self._url = url
        self._home = home
        self._range_blocks = range_blocks
        self._engine: Engine | None = None
        self._follower: Follower | None = None
        self._lock = threading.Lock()
        if url is not None:
            self._connect(url)

    @classmethod
    def open(
        cls, url: str | None = None, *, home: Path | None = None, range_blocks: int | None = None
    ) -> MarketIndex:
        """An index at `url` (SQLite or PostgreSQL), migrated to head; None: SQLite in `home`."""
        return cls(url, home, range_blocks=range_blocks)

    def _connect(self, url: str) -> None:
        engine = make_engine(url)
        migrate(engine)
        self._engine = engine
        kwargs: dict[str, Any] = {} if self._range_blocks is None else {"range_blocks": self._range_blocks}
        self._follower = Follower(engine, fts=engine.dialect.name == "sqlite", **kwargs)

    @property
    def url(self) -> str | None:
        """The database URL (password hidden), None before the first sync of a default index."""
        return None if self._engine is None else self._engine.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise UsageError("the index has no database yet: sync it with a Marketplace first")
        return self._engine

    def _bind(self, market: Marketplace) -> Follower:
        if self._follower is None:
            home = self._home
            if home is None:
                from sterling.config import Settings

                home = Settings.from_env().home
            self._connect(default_url(home, market.chain.chain_id, market.address))
        assert self._follower is not None
        return self._follower

    def sync(self, market: Marketplace, *, from_block: int | None = None) -> SyncReport:
        """Follow the deployment's events to the chain's head (see `sterling.index.follow`)."""
        with self._lock:
            follower = self._bind(market)
            with exclusive(self.engine):
                return follower.sync(market, from_block=from_block)

    def rebuild(self, market: Marketplace, *, from_block: int | None = None) -> SyncReport:
        """Forget the state (not the manifest cache) and index again from the deployment block."""
        with self._lock:
            follower = self._bind(market)
            with exclusive(self.engine):
                with self.engine.begin() as conn:
                    known = conn.execute(select(SYNC.c.deploy_block, SYNC.c.marketplace)).first()
                    conn.execute(SYNC.delete())
                if from_block is None and known is not None and known.marketplace == market.address:
                    from_block = int(known.deploy_block)  # the same deployment: no need to look again
                return follower.sync(market, from_block=from_block)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    # ------------------------------------------------------------------ reads

    def listings(self, query: queries.ListingQuery) -> queries.Page[queries.ListingRow]:
        with self.engine.connect() as conn:
            return queries.listings(conn, query)

    def events(self, query: queries.EventQuery) -> queries.Page[dict[str, Any]]:
        with self.engine.connect() as conn:
            return queries.events(conn, query)

    def jobs(self, query: queries.JobQuery) -> queries.Page[queries.JobRow]:
        with self.engine.connect() as conn:
            return queries.jobs(conn, query)

    def enclaves(self, *, registered_only: bool = False, limit: int = 100) -> Sequence[queries.EnclaveRow]:
        with self.engine.connect() as conn:
            return queries.enclaves(conn, registered_only=registered_only, limit=limit)

    def status(self) -> dict[str, Any]:
        """Where the index stands: its database, the deployment, the last block, and counts."""
        if self._engine is None:
            return {"url": None, "synced_block": None}
        with self.engine.connect() as conn:
            state = conn.execute(select(SYNC)).first()

            def count(model: Any) -> int:
                return int(conn.execute(select(func.count()).select_from(table(model))).scalar_one())

            return {
                "url": self.url,
                "dialect": self.engine.dialect.name,
                "chain_id": state.chain_id if state else None,
                "marketplace": state.marketplace if state else None,
                "deploy_block": state.deploy_block if state else None,
                "synced_block": state.synced_block if state else None,
                "listings": count(ListingRecord),
                "jobs": count(JobRecord),
                "events_stored": count(EventRecord),
                "manifests_cached": count(ManifestRecord),
            }
