"""The manifest cache: a listing's public manifest, read once ever, by its content hash.

A manifest URI ends in the manifest's sha256 and is checked against it when read, so a cached
copy can never go stale: listings that share a manifest (derived ones) and a rebuilt index read
it from the cache. A manifest that cannot be read is recorded with its error and tried again
after `RETRY_SECONDS`, never on every sync.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, or_, select, update

from sterling.errors import SterlingError
from sterling.index.apply import bulk_insert, chunks
from sterling.index.models import CLASSES, LISTINGS, MANIFESTS
from sterling.storage.manifest import read_manifest

RETRY_SECONDS = 300
FIELDS = ("name", "description", "classes", "modality", "rows")
#: Listings whose manifest is resolved per sync at most (the rest wait for the next one).
BATCH = 2000


def _fetch(uri: str, digest: str) -> dict[str, Any]:
    try:
        doc = read_manifest(uri)
    except (SterlingError, OSError, ValueError) as exc:
        return {"digest": digest, "ok": False, "document": None, "error": str(exc)[:500]}
    return {"digest": digest, "ok": True, "document": doc, "error": None}


def _cached(conn: Connection, digests: list[str]) -> dict[str, dict[str, Any]]:
    t = MANIFESTS
    out = {}
    for part in chunks(digests):
        for row in conn.execute(select(t).where(t.c.digest.in_(part))):
            out[row.digest] = dict(row._mapping)
    return out


def _due(conn: Connection, now: int) -> list[Any]:
    """Listings still without their manifest: never tried, or failed long enough ago."""
    lt, mt = LISTINGS, MANIFESTS
    stale = select(mt.c.digest).where(mt.c.ok.is_(False), mt.c.attempted_at < now - RETRY_SECONDS)
    query = (
        select(lt.c.id, lt.c.data_uri, lt.c.manifest_digest)
        .where(
            or_(
                lt.c.manifest_state == "pending",
                (lt.c.manifest_state == "unreadable") & lt.c.manifest_digest.in_(stale),
            )
        )
        .limit(BATCH)
    )
    return list(conn.execute(query))


def resolve(conn: Connection, *, fts: bool) -> int:
    """Give every due listing its manifest's fields; returns how many manifests were read from storage."""
    now = int(time.time())
    due = _due(conn, now)
    if not due:
        return 0
    digests = sorted({r.manifest_digest for r in due})
    cache = _cached(conn, digests)
    uris = {r.manifest_digest: r.data_uri for r in due}
    fresh: list[dict[str, Any]] = []
    for digest in digests:
        known = cache.get(digest)
        if known is not None and (known["ok"] or known["attempted_at"] >= now - RETRY_SECONDS):
            continue
        entry = {**_fetch(uris[digest], digest), "attempted_at": now}
        fresh.append(entry)
        cache[digest] = entry
    t = MANIFESTS  # written back in a few statements, not two per manifest
    for part in chunks([e["digest"] for e in fresh]):
        conn.execute(delete(t).where(t.c.digest.in_(part)))
    if fresh:
        conn.execute(insert(t), fresh)
    _fill(conn, due, cache, fts=fts)
    return len(fresh)


def fields(doc: dict[str, Any] | None) -> dict[str, Any]:
    """What the listing table copies from a manifest (for search, sorts and filters)."""
    doc = doc or {}
    found = doc.get("schema")
    schema: dict[str, Any] = found if isinstance(found, dict) else {}
    classes = [str(c) for c in schema.get("classes") or []]
    rows = schema.get("rows")
    return {
        "name": str(doc["name"]) if isinstance(doc.get("name"), str) else None,
        "description": str(doc.get("description") or ""),
        "classes": " ".join(classes),
        "modality": str(schema["modality"]) if isinstance(schema.get("modality"), str) else None,
        "rows": int(rows) if isinstance(rows, int) and not isinstance(rows, bool) else None,
        "class_list": classes,
    }


def _fill(conn: Connection, due: list[Any], cache: dict[str, dict[str, Any]], *, fts: bool) -> None:
    lt, ct = LISTINGS, CLASSES
    ids = [r.id for r in due]
    for part in chunks(ids):
        conn.execute(delete(ct).where(ct.c.listing_id.in_(part)))
    search_rows, class_rows, updates = [], [], []
    for r in due:
        entry = cache[r.manifest_digest]
        f = fields(entry["document"] if entry["ok"] else None)
        class_list = f.pop("class_list")
        updates.append(
            {"lid": r.id, "st": "ok" if entry["ok"] else "unreadable", **{f"f_{k}": v for k, v in f.items()}}
        )
        class_rows += [{"listing_id": r.id, "name": c[:200]} for c in dict.fromkeys(class_list)]
        search_rows.append({"rowid": r.id, "name": f["name"] or "", "d": f["description"], "c": f["classes"]})
    stmt = (
        update(lt)
        .where(lt.c.id == bindparam("lid"))
        .values(manifest_state=bindparam("st"), **{k: bindparam(f"f_{k}") for k in FIELDS})
    )
    conn.execute(stmt, updates)
    if class_rows:
        bulk_insert(conn, ct, class_rows)
    if fts:
        write_search(conn, search_rows)


def write_search(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """SQLite's FTS5 table (PostgreSQL computes its tsvector column itself)."""
    from sqlalchemy import text

    drop_search(conn, [r["rowid"] for r in rows])
    if rows:
        conn.execute(
            text(
                "INSERT INTO listing_search(rowid, name, description, classes) VALUES (:rowid, :name, :d, :c)"
            ),
            rows,
        )


def drop_search(conn: Connection, ids: list[int]) -> None:
    from sqlalchemy import text

    for part in chunks(ids):
        conn.execute(
            text("DELETE FROM listing_search WHERE rowid IN (" + ",".join(str(int(i)) for i in part) + ")")
        )
