"""The packaged migrations build exactly the tables the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sterling.index import MarketIndex
from sterling.index.models import Base


def test_migrations_match_the_models(index_url: str):
    index = MarketIndex.open(index_url)  # migrates to head
    with index.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    # Full-text search is the database's own (an FTS5 table on SQLite, a tsvector column on PostgreSQL).
    unexpected = [
        d
        for d in diff
        if not (d[0] == "remove_table" and d[1].name.startswith("listing_search"))
        and not (d[0] == "remove_column" and d[3].name == "search")
        and not (d[0] == "remove_index" and d[1].name == "ix_listings_search")
    ]
    assert unexpected == []
    MarketIndex.open(index_url).close()  # opening again: already at head, nothing to do
    index.close()
