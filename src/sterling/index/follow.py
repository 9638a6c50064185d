"""The follower: the three contracts' logs, range by range, into the database, surviving reorgs.

Each range of blocks is read with one `eth_getLogs`, decoded from a precomputed table, and
written in one transaction with the state it implies and the hash of its last block. Before
going on, the hash of the last applied block is compared with the chain's: a different one is a
reorg, rolled back to the newest stored block the chain still agrees with (the entities the
dropped events touched are rebuilt from the events that remain) and re-applied from there; no
such block, or a chain whose genesis changed, means a restarted or replaced chain, and the
index is rebuilt from the deployment block (the manifest cache is kept: it is content-addressed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, or_, select, update
from web3.exceptions import BlockNotFound

from sterling.chain.marketplace import Marketplace
from sterling.errors import ChainError, DeploymentNotFound
from sterling.index import apply, manifests
from sterling.index.decode import DecodedEvent, decode_logs
from sterling.index.models import (
    ALLOCATIONS,
    BLOCKS,
    BUDGETS,
    CLASSES,
    ENCLAVES,
    EVENTS,
    JOBS,
    LISTINGS,
    SYNC,
    AllocationRecord,
    BlockRecord,
    BudgetRecord,
    ClassRecord,
    EnclaveRecord,
    EventRecord,
    JobRecord,
    ListingRecord,
    SyncRecord,
    table,
)

#: Blocks per eth_getLogs request.
RANGE_BLOCKS = 2000
#: Recent block hashes kept (a reorg deeper than what they cover rebuilds the index).
KEEP_HASHES = 64
#: At the head, hashes of this many blocks are stored, so a shallow reorg rolls back little.
HEAD_WINDOW = 8
STATE_TABLES = (
    EventRecord,
    ListingRecord,
    ClassRecord,
    BudgetRecord,
    JobRecord,
    AllocationRecord,
    EnclaveRecord,
)


@dataclass(frozen=True)
class SyncReport:
    """What one sync did: blocks applied, events indexed, and any reorg it repaired."""

    from_block: int
    to_block: int
    events: int
    seconds: float
    rolled_back: int = 0
    rebuilt: bool = False
    manifests_read: int = 0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "from_block": self.from_block,
            "to_block": self.to_block,
            "events": self.events,
            "seconds": round(self.seconds, 6),
            "events_per_second": round(self.events_per_second, 1),
            "rolled_back": self.rolled_back,
            "rebuilt": self.rebuilt,
            "manifests_read": self.manifests_read,
        }


def followed(market: Marketplace) -> list[str]:
    """The contracts whose events the index keeps: the three of the deployment, and its Pools if known."""
    pools = getattr(market, "pools", None)
    return [c.address for c in market.contracts] + ([pools.address] if pools is not None else [])


def block_hash(market: Marketplace, number: int) -> str | None:
    try:
        return "0x" + bytes(market.chain.w3.eth.get_block(number)["hash"]).hex()
    except BlockNotFound:
        return None


def raw_logs(market: Marketplace, contracts: list[str], lo: int, hi: int) -> list[Any]:
    """eth_getLogs as the node answers it: web3's result formatters cost more than decoding.

    The embedded EVM speaks Python, not JSON-RPC, so it is asked through web3.
    """
    if market.chain.kind == "embedded":
        query = {"address": contracts, "fromBlock": lo, "toBlock": hi}
        return list(market.chain.w3.eth.get_logs(query))  # type: ignore[arg-type]
    params = {"address": contracts, "fromBlock": hex(lo), "toBlock": hex(hi)}
    response = market.chain.w3.provider.make_request("eth_getLogs", [params])  # type: ignore[arg-type]
    if "error" in response:
        raise ChainError(f"eth_getLogs for blocks {lo}-{hi} failed: {response['error']}")
    return list(response["result"])


def deployment_block(market: Marketplace) -> int:
    """The block the registry (deployed first) appeared in, by bisection over eth_getCode."""
    w3, address = market.chain.w3, market.registry.address
    lo, hi = 0, int(w3.eth.block_number)
    if not w3.eth.get_code(address, hi):
        raise DeploymentNotFound(f"no Sterling registry at {address} on chain {market.chain.chain_id}")
    while lo < hi:
        mid = (lo + hi) // 2
        if w3.eth.get_code(address, mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class Follower:
    """Keeps one database in step with one Marketplace deployment."""

    def __init__(self, engine: Engine, *, fts: bool, range_blocks: int = RANGE_BLOCKS) -> None:
        self.engine = engine
        self.fts = fts
        self.range_blocks = range_blocks
        #: The deployment whose genesis was checked by this follower (checked once, not per sync).
        self._checked: tuple[int, str, str] | None = None

    def state(self, conn: Connection) -> SyncRecord | None:
        row = conn.execute(select(SYNC)).first()
        return SyncRecord(**row._mapping) if row is not None else None

    def sync(
        self, market: Marketplace, *, from_block: int | None = None, to_block: int | None = None
    ) -> SyncReport:
        started = time.perf_counter()
        head = int(market.chain.w3.eth.block_number) if to_block is None else to_block
        with self.engine.begin() as conn:
            state = self.state(conn)
        rebuilt, rolled = False, 0
        if state is None or not self._same_deployment(state, market):
            state = self._reset(market, from_block)
            rebuilt = True
        elif state.synced_block >= state.deploy_block:
            stored = self._stored_hash(state.synced_block)
            if stored is not None and block_hash(market, state.synced_block) != stored:
                ancestor = self._ancestor(market)
                self._checked = None  # a reorg: check the genesis again next time
                if (
                    ancestor is None
                    or ancestor < state.deploy_block
                    or not self._same_deployment(state, market)
                ):
                    state, rebuilt = self._reset(market, from_block), True
                else:
                    rolled = state.synced_block - ancestor
                    self._rollback(ancestor)
                    state.synced_block = ancestor
        first = state.synced_block + 1
        events = 0
        lo = first
        while lo <= head:
            hi = min(head, lo + self.range_blocks - 1)
            events += self._apply_range(market, state, lo, hi, head)
            lo = hi + 1
        with self.engine.begin() as conn:
            read = manifests.resolve(conn, fts=self.fts)
        return SyncReport(
            from_block=first,
            to_block=max(head, state.synced_block),
            events=events,
            seconds=time.perf_counter() - started,
            rolled_back=rolled,
            rebuilt=rebuilt,
            manifests_read=read,
        )

    # ------------------------------------------------------------------ identity

    def _same_deployment(self, state: SyncRecord, market: Marketplace) -> bool:
        if state.chain_id != market.chain.chain_id or state.marketplace != market.address:
            return False
        if list(state.contracts) != followed(market):
            return False
        identity = (state.chain_id, state.marketplace, state.genesis_hash)
        if self._checked != identity:
            if block_hash(market, 0) != state.genesis_hash:
                return False
            self._checked = identity
        return True

    def _reset(self, market: Marketplace, from_block: int | None) -> SyncRecord:
        """Forget everything but the manifest cache and start again from the deployment block."""
        deploy = deployment_block(market) if from_block is None else from_block
        state = SyncRecord(
            id=1,
            chain_id=market.chain.chain_id,
            genesis_hash=block_hash(market, 0) or "",
            marketplace=market.address,
            contracts=followed(market),
            deploy_block=deploy,
            synced_block=deploy - 1,
        )
        with self.engine.begin() as conn:
            for model in (*STATE_TABLES, BlockRecord, SyncRecord):
                conn.execute(delete(table(model)))
            if self.fts:
                conn.exec_driver_sql("DELETE FROM listing_search")
            conn.execute(insert(SYNC), [_state_row(state)])
        return state

    # ------------------------------------------------------------------ reorgs

    def _stored_hash(self, number: int) -> str | None:
        with self.engine.begin() as conn:
            return conn.execute(select(BlockRecord.hash).where(BlockRecord.number == number)).scalar()

    def _ancestor(self, market: Marketplace) -> int | None:
        """The newest stored block the chain still has with the same hash."""
        with self.engine.begin() as conn:
            stored = list(
                conn.execute(select(BlockRecord.number, BlockRecord.hash).order_by(BlockRecord.number.desc()))
            )
        for number, known in stored:
            if block_hash(market, number) == known:
                return int(number)
        return None

    def _rollback(self, ancestor: int) -> None:
        """Drop every event after `ancestor` and rebuild what they touched from the events left."""
        et = EVENTS
        with self.engine.begin() as conn:
            dropped = conn.execute(select(et.c.name, et.c.args).where(et.c.block > ancestor))
            keys = {k for name, args in dropped for k in apply.keys_of(name, args)}
            conn.execute(delete(et).where(et.c.block > ancestor))
            conn.execute(delete(BLOCKS).where(BlockRecord.number > ancestor))
            rebuild(conn, keys, fts=self.fts)
            conn.execute(update(SYNC).values(synced_block=ancestor))

    # ------------------------------------------------------------------ applying

    def _apply_range(self, market: Marketplace, state: SyncRecord, lo: int, hi: int, head: int) -> int:
        for _ in range(3):
            before = block_hash(market, hi)
            logs = raw_logs(market, list(state.contracts), lo, hi)
            after = block_hash(market, hi)
            if before is not None and before == after:
                break
        else:
            raise DeploymentNotFound(f"the chain kept changing under blocks {lo}-{hi}; try again")
        decoded = decode_logs(logs, state.contracts)
        hashes = {ev.block: ev.block_hash for ev in decoded}
        hashes[hi] = before
        if hi == head:
            for n in range(max(lo, hi - HEAD_WINDOW + 1), hi):
                hashes.setdefault(n, block_hash(market, n) or "")
        with self.engine.begin() as conn:
            write_events(conn, decoded)
            _write_hashes(conn, hashes)
            conn.execute(update(SYNC).values(synced_block=hi))
        state.synced_block = hi
        return len(decoded)


def write_events(conn: Connection, decoded: list[DecodedEvent]) -> None:
    """Store the events and apply them to the state, in one go."""
    if not decoded:
        return
    apply.bulk_insert(conn, EVENTS, [_event_row(ev) for ev in decoded])
    changes = apply.Changes(conn)
    changes.prefetch([ev.args for ev in decoded])
    for ev in decoded:
        changes.apply(ev.name, ev.args, ev.block, ev.log_index)
    changes.flush()


def rebuild(conn: Connection, keys: set[apply.Key], *, fts: bool) -> None:
    """Delete the entities `keys` names and replay their remaining events into them."""
    by_kind: dict[str, list[Any]] = {"listing": [], "budget": [], "job": [], "enclave": []}
    for kind, key in keys:
        by_kind[kind].append(key)
    _delete_entities(conn, by_kind, fts=fts)
    et = EVENTS
    columns = {
        "listing": et.c.listing_id,
        "budget": et.c.data_hash,
        "job": et.c.job_id,
        "enclave": et.c.enclave,
    }
    found: dict[tuple[int, int], Any] = {}
    for kind, values in by_kind.items():
        for part in apply.chunks(values):
            for row in conn.execute(select(et).where(or_(columns[kind].in_(part)))):
                found[(row.block, row.log_index)] = row
    changes = apply.Changes(conn, only=keys)
    for position in sorted(found):
        row = found[position]
        changes.apply(row.name, row.args, row.block, row.log_index)
    changes.flush()


def _delete_entities(conn: Connection, by_kind: dict[str, list[Any]], *, fts: bool) -> None:
    targets = [
        (LISTINGS.c.id, by_kind["listing"]),
        (CLASSES.c.listing_id, by_kind["listing"]),
        (BUDGETS.c.data_hash, by_kind["budget"]),
        (JOBS.c.id, by_kind["job"]),
        (ALLOCATIONS.c.job_id, by_kind["job"]),
        (ENCLAVES.c.address, by_kind["enclave"]),
    ]
    for column, values in targets:
        for part in apply.chunks(values):
            conn.execute(delete(column.table).where(column.in_(part)))
    if fts:
        manifests.drop_search(conn, [int(i) for i in by_kind["listing"]])


def _small_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _event_row(ev: DecodedEvent) -> dict[str, Any]:
    a = ev.args
    return {
        "block": ev.block,
        "log_index": ev.log_index,
        "tx_hash": ev.tx_hash,
        "contract": ev.contract,
        "name": ev.name,
        "args": a,
        "job_id": _small_int(a.get("job_id")),
        "listing_id": _small_int(a.get("listing_id")),
        "data_hash": a.get("data_hash"),
        "enclave": a.get("enclave"),
    }


def _write_hashes(conn: Connection, hashes: dict[int, str]) -> None:
    bt = BLOCKS
    numbers = sorted(hashes)
    conn.execute(delete(bt).where(bt.c.number.in_(numbers)))
    apply.bulk_insert(conn, bt, [{"number": n, "hash": hashes[n]} for n in numbers])
    cutoff = conn.execute(
        select(bt.c.number).order_by(bt.c.number.desc()).offset(KEEP_HASHES).limit(1)
    ).scalar()
    if cutoff is not None:
        conn.execute(delete(bt).where(bt.c.number <= cutoff))


def _state_row(state: SyncRecord) -> dict[str, Any]:
    return {
        c: getattr(state, c)
        for c in (
            "id",
            "chain_id",
            "genesis_hash",
            "marketplace",
            "contracts",
            "deploy_block",
            "synced_block",
        )
    }
