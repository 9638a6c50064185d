"""The chain as an explorer shows it: blocks, transactions (pending and mined), events, enclaves.

Blocks and transactions are read from the node through web3 and the Marketplace's ABI;
transactions to the Marketplace are decoded to the function they call. Events and enclaves are
pages of the market index (`sterling.index`), which follows the events once instead of every
request reading them all from block 0. Values are made JSON-safe: bytes as 0x-hex,
integers beyond 2^53 (wei) as decimal strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import Event
from sterling.errors import NotFound, UsageError

if TYPE_CHECKING:
    from sterling.index import MarketIndex

SAFE_INT = 2**53
#: Event arguments that are wei: always decimal strings, so a page never gets a number for one and a
#: string for another.
WEI_ARGS = frozenset(
    {
        "escrow",
        "price",
        "amount",
        "paid",
        "refunded",
        "price_per_job",
        "price_per_epsilon",
        "price_per_prediction",
        "value",
    }
)


def json_safe(value: Any) -> Any:
    """`value` with bytes as 0x-hex and integers past 2^53 as decimal strings, recursively."""
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return value
    if isinstance(value, int):
        return str(value) if abs(value) >= SAFE_INT else value
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def event_json(ev: Event) -> dict[str, Any]:
    return {
        "name": ev.name,
        "block": ev.block,
        "tx_hash": ev.tx_hash,
        "log_index": ev.log_index,
        "args": {
            k: str(v) if k in WEI_ARGS and isinstance(v, int) else json_safe(v) for k, v in ev.args.items()
        },
    }


def events(
    index: MarketIndex,
    *,
    kind: str | None = None,
    job_id: int | None = None,
    listing_id: int | None = None,
    page: int = 1,
    per_page: int = 50,
) -> dict[str, Any]:
    """A page of the deployment's events, newest first, optionally one name, job or listing."""
    from sterling.index import EventQuery

    found = index.events(
        EventQuery(kind=kind, job_id=job_id, listing_id=listing_id, page=page, per_page=per_page)
    )
    return found.map(lambda item: item)


# ------------------------------------------------------------------ blocks and transactions


def block_summary(market: Marketplace, number: int) -> dict[str, Any]:
    block = market.chain.w3.eth.get_block(number)
    return {
        "number": int(block["number"]),
        "hash": "0x" + bytes(block["hash"]).hex(),
        "timestamp": int(block["timestamp"]),
        "tx_count": len(block["transactions"]),
        "gas_used": int(block["gasUsed"]),
    }


def blocks(market: Marketplace, *, limit: int = 20, before: int | None = None) -> list[dict[str, Any]]:
    """Up to `limit` blocks, newest first, numbered below `before` (default: from the latest)."""
    latest = int(market.chain.w3.eth.block_number)
    top = latest if before is None else min(latest, before - 1)
    return [block_summary(market, n) for n in range(top, max(-1, top - limit), -1)]


def block(market: Marketplace, number: int) -> dict[str, Any]:
    latest = int(market.chain.w3.eth.block_number)
    if not 0 <= number <= latest:
        raise NotFound(f"no block {number} (the latest is {latest})")
    raw = market.chain.w3.eth.get_block(number, full_transactions=True)
    summary = block_summary(market, number)
    summary.pop("tx_count")
    return {**summary, "transactions": [tx_json(market, tx, mined=True) for tx in raw["transactions"]]}


def _function(market: Marketplace, to: str | None, data: Any) -> str | None:
    if not to:  # the embedded EVM gives a contract creation `to` = b"" (found by fuzzing: a 500)
        return "deploy"
    raw = bytes(data) if not isinstance(data, str) else bytes.fromhex(data.removeprefix("0x"))
    return market.decode_function(to, raw)  # the Marketplace, its registry or its fee contract


def _get(tx: Any, *names: str) -> Any:
    """A field by its JSON-RPC name or the embedded EVM's snake_case name (full blocks there are raw)."""
    for name in names:
        if tx.get(name) is not None:
            return tx[name]
    return None


def tx_json(market: Marketplace, tx: Any, *, mined: bool) -> dict[str, Any]:
    """Tx: hash, block, from, to, decoded Marketplace function, status and gas (mined only), value."""
    tx_hash = "0x" + bytes(tx["hash"]).hex()
    to = tx.get("to")
    number = _get(tx, "blockNumber", "block_number")
    status = gas = None
    if mined:
        receipt = market.chain.w3.eth.get_transaction_receipt(tx["hash"])
        status, gas = int(receipt["status"]), int(receipt["gasUsed"])
    return {
        "hash": tx_hash,
        "block": int(number) if mined and number is not None else None,
        "from": str(tx["from"]),
        "to": str(to) if to else None,
        "function": _function(market, to, _get(tx, "input", "data") or b""),
        "status": status,
        "gas_used": gas,
        "value_wei": str(int(tx.get("value", 0))),
    }


def transactions(market: Marketplace, *, limit: int = 50) -> dict[str, list[dict[str, Any]]]:
    """Pending transactions (those a node holds for its next block) and the latest mined ones."""
    w3 = market.chain.w3
    latest = int(w3.eth.block_number)
    pending: list[dict[str, Any]] = []
    try:
        nxt = w3.eth.get_block("pending", full_transactions=True)
        if nxt.get("number") is None or int(nxt["number"]) > latest:
            pending = [tx_json(market, tx, mined=False) for tx in nxt["transactions"]][:limit]
    except (ValueError, KeyError, TypeError, NotImplementedError):
        pending = []  # a node without a pending block has nothing pending to show
    mined: list[dict[str, Any]] = []
    n = latest
    while n >= 0 and len(mined) < limit:
        raw = w3.eth.get_block(n, full_transactions=True)
        mined.extend(tx_json(market, tx, mined=True) for tx in reversed(raw["transactions"]))
        n -= 1
    return {"pending": pending, "mined": mined[:limit]}


def transaction(market: Marketplace, tx_hash: str) -> dict[str, Any]:
    """One transaction with the Marketplace events it emitted; NotFound for an unknown hash."""
    from web3.exceptions import TransactionNotFound

    text = tx_hash.removeprefix("0x")
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise UsageError(f"a transaction hash is 32 bytes of hex, got {tx_hash!r}")
    w3 = market.chain.w3
    try:
        tx = w3.eth.get_transaction("0x" + text)  # type: ignore[arg-type]
    except TransactionNotFound:
        raise NotFound(f"no transaction {tx_hash}") from None
    mined = _get(tx, "blockNumber", "block_number") is not None
    out = tx_json(market, tx, mined=mined)
    logs = w3.eth.get_transaction_receipt(tx["hash"])["logs"] if mined else []
    return {**out, "events": [event_json(ev) for ev in market.decode_logs(logs)]}


# ------------------------------------------------------------------------------ enclaves


def simulated(market: Marketplace, state_dir: Path) -> bool:
    """Whether the Marketplace trusts the local simulated platform key (as `sterling enclave status`)."""
    from sterling.chain.deploy import SIM_PLATFORM_KEY_FILE, simulated_platform_key

    return (state_dir / SIM_PLATFORM_KEY_FILE).exists() and simulated_platform_key(
        state_dir
    ).address == market.attestation_signer()


def enclaves(
    market: Marketplace, state_dir: Path, index: MarketIndex, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The enclaves that registered (at most `limit`), newest first, with whether each is still live
    (asked of the chain, so a revoked measurement shows at once) and simulated."""
    sim = simulated(market, state_dir)
    return [
        {
            "address": e.address,
            "measurement": "0x" + e.measurement.hex(),
            "registered": e.registered and market.is_enclave(e.address),
            "simulated": sim,
            "hpke_public_key": "0x" + e.hpke_public_key.hex(),
        }
        for e in index.enclaves(limit=limit)
    ]
