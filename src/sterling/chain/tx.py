"""Sending transactions: local signing, nonces, fees, gas, and revert reasons.

Every transaction is signed locally with the sender's key (eth-account) and
sent raw, so the same code works on the embedded EVM, on anvil and on any
JSON-RPC node, and no node ever holds a key. Gas is given explicitly so a
transaction runs the EVM once (no estimate first) on local chains; on other
chains it is estimated with head-room. A transaction that reverts is mined
with status 0; its reason is then recovered by replaying it as a call at the
block before, and raised as `ContractRevert`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import TxReceipt

from sterling.errors import ChainError, ContractRevert

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)
#: What web3 raises for a revert over RPC, and what the embedded EVM raises.
REVERTS = (ContractLogicError, TransactionFailed)


def decode_revert(data: bytes | str | None, fallback: str = "") -> str:
    """The human reason inside revert data, or `fallback` when there is none."""
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x")) if data.startswith("0x") else data.encode()
    if not data:
        return fallback or "reverted without a reason"
    if data[:4] == ERROR_STRING_SELECTOR:
        (reason,) = abi_decode(["string"], data[4:])
        return str(reason)
    if data[:4] == PANIC_SELECTOR:
        (code,) = abi_decode(["uint256"], data[4:])
        return f"panic 0x{code:02x}"
    return fallback or f"reverted with data 0x{data.hex()}"


def revert_from_exception(exc: Exception, function: str) -> ContractRevert:
    """Turn web3's ways of saying "reverted" into one `ContractRevert`."""
    data = getattr(exc, "data", None)
    message = str(getattr(exc, "message", "") or (exc.args[0] if exc.args else "") or exc)
    reason = message.removeprefix("execution reverted: ").removeprefix("execution reverted")
    if isinstance(data, (bytes, str)) and data:
        reason = decode_revert(data, reason)
    return ContractRevert(reason.strip() or "reverted without a reason", function=function)


@dataclass
class GasPolicy:
    """How gas limits are chosen.

    `fixed` gives every transaction `limit` gas (local dev chains, where an
    estimate would run the EVM a second time); `estimate` asks the node and
    adds `headroom`.
    """

    mode: str = "fixed"
    limit: int = 6_000_000
    headroom: float = 1.25


class Transactor:
    """Signs and sends transactions for any number of local accounts.

    Nonces are tracked locally per sender (one lock per sender, so threads may
    share a Transactor), and fees are refreshed from the latest block at most
    every `fee_ttl` seconds with a 2× base-fee margin.
    """

    def __init__(
        self,
        w3: Web3,
        *,
        chain_id: int,
        gas: GasPolicy | None = None,
        fee_ttl: float = 1.0,
        receipt_timeout: float = 120.0,
        poll_latency: float = 0.01,
    ) -> None:
        self.w3 = w3
        self.chain_id = chain_id
        self.gas = gas or GasPolicy()
        self.fee_ttl = fee_ttl
        self.receipt_timeout = receipt_timeout
        self.poll_latency = poll_latency
        self._nonces: dict[str, int] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._fees: tuple[float, int, int] | None = None
        #: Called with (function, receipt) after every mined transaction, e.g.
        #: by the gas benchmark or an explorer that shows recent transactions.
        self.observers: list[Callable[[str, TxReceipt], None]] = []

    def reset(self) -> None:
        """Forget cached nonces and fees (after a chain snapshot is reverted)."""
        with self._guard:
            self._nonces.clear()
            self._fees = None

    def _lock(self, address: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(address, threading.Lock())

    def _fee_fields(self) -> tuple[int, int]:
        now = time.monotonic()
        if self._fees is None or now - self._fees[0] > self.fee_ttl:
            block = self.w3.eth.get_block("latest")
            base = int(block.get("baseFeePerGas", 0) or 0)
            tip = 10**9 if base else 0
            self._fees = (now, 2 * base + tip, tip)
        return self._fees[1], self._fees[2]

    def send(
        self,
        account: LocalAccount,
        *,
        to: str | None,
        data: bytes | str,
        value: int = 0,
        function: str = "",
        gas: int | None = None,
    ) -> TxReceipt:
        """Sign, send and wait for one transaction; raise `ContractRevert` on revert."""
        sender = account.address
        tx: dict[str, Any] = {
            "from": sender,
            "data": HexBytes(data),
            "value": value,
            "chainId": self.chain_id,
        }
        if to is not None:
            tx["to"] = to
        if gas is None and self.gas.mode == "estimate":
            try:
                gas = int(self.w3.eth.estimate_gas(tx) * self.gas.headroom)  # type: ignore[arg-type]
            except REVERTS as exc:
                raise revert_from_exception(exc, function) from None
        tx["gas"] = gas or self.gas.limit
        with self._lock(sender):
            if sender not in self._nonces:
                self._nonces[sender] = self.w3.eth.get_transaction_count(sender, "pending")
            tx["nonce"] = self._nonces[sender]
            tx["maxFeePerGas"], tx["maxPriorityFeePerGas"] = self._fee_fields()
            signed = account.sign_transaction(tx)
            try:
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except REVERTS as exc:
                self._nonces.pop(sender, None)
                raise revert_from_exception(exc, function) from None
            except (Web3RPCError, ValueError) as exc:
                self._nonces.pop(sender, None)
                self._fees = None
                raise ChainError(f"{function or 'transaction'}: node refused it: {exc}") from exc
            self._nonces[sender] = tx["nonce"] + 1
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout, poll_latency=self.poll_latency
            )
        except TimeExhausted as exc:
            raise ChainError(f"{function or 'transaction'} {tx_hash.hex()} not mined in time") from exc
        for observe in self.observers:
            observe(function, receipt)
        if receipt["status"] != 1:
            raise self._explain_failure(tx, receipt, function)
        return receipt

    def _explain_failure(self, tx: dict[str, Any], receipt: TxReceipt, function: str) -> ContractRevert:
        call = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        if receipt["gasUsed"] >= tx["gas"]:
            return ContractRevert("out of gas", function=function, tx_hash=tx_hash)
        try:
            self.w3.eth.call(call, block_identifier=max(receipt["blockNumber"] - 1, 0))  # type: ignore[arg-type]
        except REVERTS as exc:
            err = revert_from_exception(exc, function)
            err.tx_hash = tx_hash
            return err
        return ContractRevert(
            "reverted (reason not recoverable by replay)", function=function, tx_hash=tx_hash
        )

    def call(self, fn: Callable[[], Any], function: str) -> Any:
        """Run a view call, turning a revert into `ContractRevert`."""
        try:
            return fn()
        except REVERTS as exc:
            raise revert_from_exception(exc, function) from None
