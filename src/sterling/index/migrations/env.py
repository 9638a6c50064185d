"""Alembic's environment for the index: always run on the connection `sterling.index.db` passes."""

from __future__ import annotations

from alembic import context

from sterling.index.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
