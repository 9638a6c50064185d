"""Events to state: what each event does to a listing, a budget, a job or an enclave.

`Changes` caches the rows a range of events touches (read from the database once, on first
use), applies each event to them in chain order, and writes them back in bulk at the end, so a
range costs a few statements, not a few per event. `only` limits it to some entities: after a
reorg the entities the dropped events touched are deleted and rebuilt from their remaining
events, and those events' effects on anything else are skipped (it was never wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, delete, insert, select, update

from sterling.chain.types import JobState
from sterling.chain.units import MICRO
from sterling.index.models import ALLOCATIONS, BUDGETS, ENCLAVES, JOBS, LISTINGS

Key = tuple[str, Any]  # ("listing", id) | ("budget", data_hash) | ("job", id) | ("enclave", address)
Row = dict[str, Any]
CHUNK = 500

LISTING_EVENTS = ("ListingPublished", "ListingWithdrawn")
JOB_EVENTS = (
    "JobSubmitted",
    "JobClaimed",
    "JobLeaseExtended",
    "JobProgress",
    "JobExpired",
    "JobCancelled",
    "JobCompleted",
    "JobFailed",
    "Payout",
)


def keys_of(name: str, args: dict[str, Any]) -> list[Key]:
    """The entities an event changes (what a rollback has to rebuild)."""
    if name in LISTING_EVENTS:
        return [("listing", int(args["listing_id"]))]
    if name == "BudgetCreated":
        return [("budget", str(args["data_hash"]))]
    if name in ("EpsilonReserved", "EpsilonReleased"):
        return [("budget", str(args["data_hash"])), ("job", int(args["job_id"]))]
    if name in JOB_EVENTS:
        return [("job", int(args["job_id"]))]
    if name in ("EnclaveRegistered", "EnclaveRevoked"):
        return [("enclave", str(args["enclave"]))]
    return []


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def bulk_insert(conn: Connection, table: Table, rows: Sequence[Row]) -> None:
    """One executemany for `rows` (the driver batches it: SQLite in C, psycopg in a pipeline)."""
    if rows:
        conn.execute(insert(table), list(rows))


def _manifest_digest(uri: str) -> str | None:
    tail = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    return tail if len(tail) == 64 and all(c in "0123456789abcdef" for c in tail) else None


MODELS: dict[str, tuple[Table, str]] = {
    "listing": (LISTINGS, "id"),
    "budget": (BUDGETS, "data_hash"),
    "job": (JOBS, "id"),
    "enclave": (ENCLAVES, "address"),
}


class Changes:
    """Rows touched by a batch of events, loaded lazily, written back by `flush`."""

    def __init__(self, conn: Connection, *, only: set[Key] | None = None) -> None:
        self.conn = conn
        self.only = only
        self.rows: dict[str, dict[Any, Row | None]] = {"listing": {}, "budget": {}, "job": {}, "enclave": {}}
        self.allocations: dict[int, list[Row]] = {}
        self.dirty: set[Key] = set()
        self.dirty_allocations: set[int] = set()
        self.new_listings: list[int] = []

    def get(self, kind: str, key: Any) -> Row | None:
        cache = self.rows[kind]
        if key not in cache:
            model, pk = MODELS[kind]
            table = model
            found = self.conn.execute(select(table).where(table.c[pk] == key)).first()
            cache[key] = dict(found._mapping) if found is not None else None
        return cache[key]

    def prefetch(self, events: Sequence[dict[str, Any]]) -> None:
        """Load every listing, budget, job and allocation list `events` name, a few queries per kind
        (`IN` over up to a chunk of keys) instead of one query per entity as `get` would."""
        wanted: dict[str, set[Any]] = {"listing": set(), "budget": set(), "job": set()}
        for args in events:
            if "listing_id" in args:
                wanted["listing"].add(int(args["listing_id"]))
            if "data_hash" in args:
                wanted["budget"].add(str(args["data_hash"]))
            if "job_id" in args:
                wanted["job"].add(int(args["job_id"]))
        for kind, keys in wanted.items():
            model, pk = MODELS[kind]
            missing = sorted(k for k in keys if k not in self.rows[kind])
            for part in chunks(missing):
                for found in self.conn.execute(select(model).where(model.c[pk].in_(part))):
                    row = dict(found._mapping)
                    self.rows[kind][row[pk]] = row
                for k in part:
                    self.rows[kind].setdefault(k, None)
        jobs = sorted(j for j in wanted["job"] if j not in self.allocations)
        for part in chunks(jobs):
            table = ALLOCATIONS
            for j in part:
                self.allocations[j] = []
            stored = self.conn.execute(
                select(table).where(table.c.job_id.in_(part)).order_by(table.c.job_id, table.c.position)
            )
            for r in stored:
                self.allocations[int(r.job_id)].append(dict(r._mapping))

    def put(self, kind: str, key: Any, row: Row) -> None:
        self.rows[kind][key] = row
        self.dirty.add((kind, key))

    def touch(self, kind: str, key: Any) -> Row | None:
        row = self.get(kind, key)
        if row is not None:
            self.dirty.add((kind, key))
        return row

    def job_allocations(self, job_id: int) -> list[Row]:
        if job_id not in self.allocations:
            table = ALLOCATIONS
            found = self.conn.execute(
                select(table).where(table.c.job_id == job_id).order_by(table.c.position)
            )
            self.allocations[job_id] = [dict(r._mapping) for r in found]
        self.dirty_allocations.add(job_id)
        return self.allocations[job_id]

    def wants(self, key: Key) -> bool:
        return self.only is None or key in self.only

    def apply(self, name: str, args: dict[str, Any], block: int, log_index: int) -> None:
        handler = HANDLERS.get(name)
        if handler is not None:
            handler(self, args, block, log_index)

    # ------------------------------------------------------------------ writing back

    def flush(self) -> None:
        for kind, (model, pk) in MODELS.items():
            keys = [k for (kd, k) in self.dirty if kd == kind]
            if not keys:
                continue
            if kind == "listing":
                self._with_budget(keys)
            table = model
            for part in chunks(keys):
                self.conn.execute(delete(table).where(table.c[pk].in_(part)))
            rows = [row for row in (self.rows[kind][k] for k in keys) if row is not None]
            if rows:
                bulk_insert(self.conn, table, rows)
        self._flush_allocations()
        self._flush_open()

    def _with_budget(self, listing_ids: list[Any]) -> None:
        for lid in listing_ids:
            row = self.rows["listing"][lid]
            if row is None:
                continue
            budget = self.get("budget", row["data_hash"])
            left = _left(budget)
            row["epsilon_left"] = max(0, left)
            row["open"] = bool(row["active"]) and left > 0

    def _flush_allocations(self) -> None:
        table = ALLOCATIONS
        job_ids = sorted(self.dirty_allocations)
        for part in chunks(job_ids):
            self.conn.execute(delete(table).where(table.c.job_id.in_(part)))
        rows = [a for j in job_ids for a in self.allocations[j]]
        if rows:
            bulk_insert(self.conn, table, rows)

    def _flush_open(self) -> None:
        """Every listing of a changed budget: its ε left, and whether it is open."""
        params = []
        for kind, key in self.dirty:
            budget = self.rows[kind].get(key) if kind == "budget" else None
            if budget is not None:
                left = _left(budget)
                params.append({"h": key, "left": max(0, left), "positive": left > 0})
        if params:
            t = LISTINGS
            stmt = (
                update(t)
                .where(t.c.data_hash == bindparam("h"))
                .values(epsilon_left=bindparam("left"), open=and_(t.c.active, bindparam("positive")))
            )
            self.conn.execute(stmt, params)


def _left(budget: Row | None) -> int:
    if budget is None:
        return 0
    return int(budget["total"]) - int(budget["spent"]) - int(budget["reserved"])


# ---------------------------------------------------------------------------- handlers


def _published(ch: Changes, a: dict[str, Any], block: int, log_index: int) -> None:
    lid = int(a["listing_id"])
    if not ch.wants(("listing", lid)):
        return
    per_job, per_eps, cap = (
        int(a["price_per_job"]),
        int(a["price_per_epsilon"]),
        int(a["max_epsilon_per_job"]),
    )
    digest = _manifest_digest(str(a["data_uri"]))
    ch.put(
        "listing",
        lid,
        {
            "id": lid,
            "provider": a["provider"],
            "data_hash": a["data_hash"],
            "data_uri": a["data_uri"],
            "manifest_digest": digest,
            "contract_hash": a["contract_hash"],
            "parent": int(a["parent"]),
            "price_per_job": per_job,
            "price_per_epsilon": per_eps,
            "max_epsilon_per_job": cap,
            "policy": a["policy"],
            "pinned_measurement": a["pinned_measurement"],
            "price_per_prediction": int(a["price_per_prediction"]),
            "price_at_cap": per_job + per_eps * cap // MICRO,
            "active": True,
            "open": False,
            "epsilon_left": 0,
            "published_block": block,
            "published_log": log_index,
            "manifest_state": "pending" if digest else "unreadable",
            "name": None,
            "description": None,
            "classes": None,
            "modality": None,
            "rows": None,
        },
    )
    ch.new_listings.append(lid)


def _withdrawn(ch: Changes, a: dict[str, Any], _b: int, _l: int) -> None:
    key = ("listing", int(a["listing_id"]))
    row = ch.touch(*key) if ch.wants(key) else None
    if row is not None:
        row["active"] = False


def _budget_created(ch: Changes, a: dict[str, Any], _b: int, _l: int) -> None:
    h = str(a["data_hash"])
    if ch.wants(("budget", h)):
        ch.put(
            "budget",
            h,
            {
                "data_hash": h,
                "owner": a["owner"],
                "total": int(a["total"]),
                "spent": 0,
                "reserved": 0,
                "delta": int(a["delta"]),
            },
        )


def _budget_delta(ch: Changes, h: str, reserved: int, spent: int) -> None:
    row = ch.touch("budget", h) if ch.wants(("budget", h)) else None
    if row is not None:
        row["reserved"] = max(0, int(row["reserved"]) + reserved)
        row["spent"] = int(row["spent"]) + spent


def _reserved(ch: Changes, a: dict[str, Any], _b: int, _l: int) -> None:
    eps = int(a["micro_epsilon"])
    _budget_delta(ch, str(a["data_hash"]), eps, 0)
    job_id = int(a["job_id"])
    if ch.wants(("job", job_id)):
        allocations = ch.job_allocations(job_id)
        allocations.append(
            {
                "job_id": job_id,
                "position": len(allocations),
                "listing_id": int(a["listing_id"]),
                "reserved": eps,
                "price": int(a["price"]),
                "spent": 0,
                "payout": 0,
                "weight": 0,
            }
        )


def _allocation(ch: Changes, a: dict[str, Any]) -> Row | None:
    job_id = int(a["job_id"])
    if not ch.wants(("job", job_id)):
        return None
    lid = int(a["listing_id"])
    return next((x for x in ch.job_allocations(job_id) if x["listing_id"] == lid), None)


def _released(ch: Changes, a: dict[str, Any], _b: int, _l: int) -> None:
    charged = int(a["charged"])
    _budget_delta(ch, str(a["data_hash"]), -int(a["reserved"]), charged)
    allocation = _allocation(ch, a)
    if allocation is not None:
        allocation["spent"] = charged


def _payout(ch: Changes, a: dict[str, Any], _b: int, _l: int) -> None:
    allocation = _allocation(ch, a)
    if allocation is not None:
        allocation["payout"], allocation["weight"] = int(a["amount"]), int(a["weight"])


def _submitted(ch: Changes, a: dict[str, Any], block: int, _l: int) -> None:
    job_id = int(a["job_id"])
    if ch.wants(("job", job_id)):
        ch.put(
            "job",
            job_id,
            {
                "id": job_id,
                "consumer": a["consumer"],
                "state": int(JobState.PENDING),
                "escrow": int(a["escrow"]),
                "delta": int(a["delta"]),
                "job_hash": a["job_hash"],
                "job_uri": a["job_uri"],
                "enclave": None,
                "lease_deadline": 0,
                "submitted_block": block,
                "step": 0,
                "steps": 0,
                "micro_epsilon": 0,
                "has_progress": False,
            },
        )


def _job_update(
    fields: Callable[[dict[str, Any]], Row],
) -> Callable[[Changes, dict[str, Any], int, int], None]:
    def handler(ch: Changes, a: dict[str, Any], _b: int, _l: int) -> None:
        key = ("job", int(a["job_id"]))
        row = ch.touch(*key) if ch.wants(key) else None
        if row is not None:
            row.update(fields(a))

    return handler


def _enclave_registered(ch: Changes, a: dict[str, Any], block: int, log_index: int) -> None:
    address = str(a["enclave"])
    if ch.wants(("enclave", address)):
        ch.put(
            "enclave",
            address,
            {
                "address": address,
                "measurement": a["measurement"],
                "hpke_public_key": a["hpke_public_key"],
                "signer": str(a.get("signer") or ""),
                "registered": True,
                "block": block,
                "log_index": log_index,
            },
        )


def _enclave_revoked(ch: Changes, a: dict[str, Any], _b: int, _l: int) -> None:
    key = ("enclave", str(a["enclave"]))
    row = ch.touch(*key) if ch.wants(key) else None
    if row is not None:
        row["registered"] = False


HANDLERS: dict[str, Callable[[Changes, dict[str, Any], int, int], None]] = {
    "ListingPublished": _published,
    "ListingWithdrawn": _withdrawn,
    "BudgetCreated": _budget_created,
    "EpsilonReserved": _reserved,
    "EpsilonReleased": _released,
    "Payout": _payout,
    "JobSubmitted": _submitted,
    "JobClaimed": _job_update(
        lambda a: {
            "state": int(JobState.CLAIMED),
            "enclave": a["enclave"],
            "lease_deadline": int(a["lease_deadline"]),
        }
    ),
    "JobLeaseExtended": _job_update(lambda a: {"lease_deadline": int(a["lease_deadline"])}),
    "JobProgress": _job_update(
        lambda a: {
            "step": int(a["step"]),
            "steps": int(a["steps"]),
            "micro_epsilon": int(a["micro_epsilon"]),
            "lease_deadline": int(a["lease_deadline"]),
            "has_progress": True,
        }
    ),
    "JobExpired": _job_update(
        lambda a: {"state": int(JobState.PENDING), "enclave": None, "lease_deadline": 0}
    ),
    "JobCancelled": _job_update(lambda a: {"state": int(JobState.CANCELLED)}),
    "JobCompleted": _job_update(lambda a: {"state": int(JobState.COMPLETED)}),
    "JobFailed": _job_update(lambda a: {"state": int(JobState.FAILED)}),
    "EnclaveRegistered": _enclave_registered,
    "EnclaveRevoked": _enclave_revoked,
}
