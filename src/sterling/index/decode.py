"""Logs to events, fast: one precomputed table from topic to ABI, decoded with eth_abi.

web3's per-log contract event processing builds a fresh event object for every log; the
follower decodes hundreds of thousands, so it looks each log's first topic up in a table built
once from the three contracts' ABIs and decodes topics and data directly. Arguments come out
as the explorer shows them (`sdk.explorer.json_safe`: bytes as 0x-hex, wei as decimal text).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address

from sterling.chain import artifacts
from sterling.sdk.explorer import WEI_ARGS, json_safe

CONTRACTS = ("Marketplace", "EnclaveRegistry", "PredictionFees", "Pools")


@dataclass(frozen=True)
class EventSpec:
    name: str
    topics: tuple[tuple[str, str], ...]  # indexed (name, type), in order
    data: tuple[tuple[str, str], ...]  # the rest
    order: tuple[str, ...]  # argument names as the ABI lists them


@dataclass(frozen=True)
class DecodedEvent:
    """One log as the index stores it."""

    block: int
    log_index: int
    block_hash: str
    tx_hash: str
    contract: str
    name: str
    args: dict[str, Any]


def _type(arg: dict[str, Any]) -> str:
    if arg["type"].startswith("tuple"):
        inner = ",".join(_type(c) for c in arg["components"])
        return f"({inner}){arg['type'][5:]}"
    return str(arg["type"])


def _abi(name: str) -> list[dict[str, Any]]:
    try:
        return artifacts.load(name).abi
    except (OSError, KeyError, ValueError):  # a contract this build does not ship
        return []


@lru_cache(maxsize=1)
def specs() -> dict[bytes, EventSpec]:
    """topic0 -> how to decode it, for every event of the three contracts."""
    out: dict[bytes, EventSpec] = {}
    for name in CONTRACTS:
        for item in _abi(name):
            if item["type"] != "event":
                continue
            inputs = item["inputs"]
            out[event_abi_to_log_topic(item)] = EventSpec(  # type: ignore[arg-type]
                name=str(item["name"]),
                topics=tuple((a["name"], _type(a)) for a in inputs if a["indexed"]),
                data=tuple((a["name"], _type(a)) for a in inputs if not a["indexed"]),
                order=tuple(a["name"] for a in inputs),
            )
    return out


@lru_cache(maxsize=65536)
def checksum(address: str) -> str:
    return str(to_checksum_address(address))


_STATIC = ("uint", "int", "address", "bool", "bytes")


def _simple(abi_type: str) -> bool:
    """A type `_words` decodes itself: elementary, not an array or tuple."""
    return abi_type in ("string", "bytes") or (
        abi_type.startswith(_STATIC) and "[" not in abi_type and "(" not in abi_type
    )


def _word(abi_type: str, word: bytes) -> Any:
    if abi_type == "address":
        return "0x" + word[12:].hex()
    if abi_type == "bool":
        return word != bytes(32)
    if abi_type.startswith("uint"):
        return int.from_bytes(word, "big")
    if abi_type.startswith("int"):
        return int.from_bytes(word, "big", signed=True)
    return word[: int(abi_type[5:])]  # bytesN


def _words(types: Sequence[str], data: bytes) -> tuple[Any, ...]:
    """ABI-decode elementary types straight from 32-byte words (eth_abi for anything else)."""
    if not all(_simple(t) for t in types):
        return tuple(abi_decode(list(types), data))
    out = []
    for i, abi_type in enumerate(types):
        word = data[32 * i : 32 * i + 32]
        if len(word) != 32:
            raise ValueError(f"log data too short for {types}")
        if abi_type in ("string", "bytes"):
            start = int.from_bytes(word, "big")
            size = int.from_bytes(data[start : start + 32], "big")
            raw = data[start + 32 : start + 32 + size]
            if len(raw) != size:
                raise ValueError(f"log data too short for {types}")
            out.append(raw.decode("utf-8", "replace") if abi_type == "string" else raw)
        else:
            out.append(_word(abi_type, word))
    return tuple(out)


def _value(name: str, abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return checksum(value)
    if isinstance(value, int) and not isinstance(value, bool) and name in WEI_ARGS:
        return str(value)
    return json_safe(value)


def _raw(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    return bytes(value)


def _hex(value: Any) -> str:
    if isinstance(value, str) and value.startswith("0x"):
        return value.lower()
    return "0x" + _raw(value).hex()


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def decode_log(log: Any, table: dict[bytes, EventSpec]) -> DecodedEvent | None:
    """The event of one log, or None for a topic none of the three contracts declares."""
    topics = log["topics"]
    if not topics:
        return None
    spec = table.get(_raw(topics[0]))
    if spec is None or len(topics) != len(spec.topics) + 1:
        return None
    args: dict[str, Any] = {}
    for (name, abi_type), topic in zip(spec.topics, topics[1:], strict=True):
        # an indexed string or bytes is only its hash: kept as such
        (value,) = (_raw(topic),) if abi_type in ("string", "bytes") else _words([abi_type], _raw(topic))
        args[name] = _value(name, abi_type, value)
    try:
        values = _words([t for _, t in spec.data], _raw(log["data"])) if spec.data else ()
    except ValueError:
        return None  # not what the ABI says: not one of ours
    for (name, abi_type), value in zip(spec.data, values, strict=True):
        args[name] = _value(name, abi_type, value)
    return DecodedEvent(
        block=_int(log["blockNumber"]),
        log_index=_int(log["logIndex"]),
        block_hash=_hex(log["blockHash"]),
        tx_hash=_hex(log["transactionHash"]),
        contract=checksum(str(log["address"]) if isinstance(log["address"], str) else _hex(log["address"])),
        name=spec.name,
        args={k: args[k] for k in spec.order},
    )


def decode_logs(logs: Iterable[Any], contracts: Sequence[str]) -> list[DecodedEvent]:
    """The events of `logs` emitted by `contracts`, in chain order."""
    table = specs()
    wanted = {checksum(c) for c in contracts}
    out = [ev for ev in (decode_log(log, table) for log in logs) if ev is not None and ev.contract in wanted]
    out.sort(key=lambda ev: (ev.block, ev.log_index))
    return out
