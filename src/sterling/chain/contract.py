"""What every typed contract wrapper shares: encoding, sending, calling, event decoding.

Transactions are signed by the `LocalAccount` passed in; nothing reaches into
a node's wallet. Reverts become `ContractRevert` carrying the contract's
reason (``marketplace: ...``, ``registry: ...``, ``fees: ...``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from web3.contract import Contract
from web3.types import TxReceipt

from sterling.chain import artifacts
from sterling.chain.node import Chain
from sterling.chain.types import Event
from sterling.errors import ChainError


def as_bytes(value: Any) -> bytes:
    return bytes(value)


class ContractClient:
    """What every typed contract wrapper shares: encoding, sending, event decoding."""

    artifact_name: str = ""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        art = artifacts.load(self.artifact_name)
        self.contract: Contract = chain.w3.eth.contract(address=self.address, abi=art.abi)
        self._events = {
            event_abi_to_log_topic(e): e["name"]  # type: ignore[arg-type]
            for e in art.abi
            if e["type"] == "event"
        }

    @classmethod
    def _deploy(cls, chain: Chain, deployer: LocalAccount, *args: Any) -> TxReceipt:
        art = artifacts.load(cls.artifact_name)
        factory = chain.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        data = factory.constructor(*args).data_in_transaction
        receipt = chain.transactor.send(deployer, to=None, data=data, function=f"deploy {cls.artifact_name}")
        return receipt

    def exists(self) -> bool:
        return len(self.chain.w3.eth.get_code(self.address)) > 0

    def _send(self, account: LocalAccount, fn: str, *args: Any, value: int = 0) -> TxReceipt:
        data = self.contract.encode_abi(fn, args=list(args))
        return self.chain.transactor.send(account, to=self.address, data=data, value=value, function=fn)

    def _call(self, fn: str, *args: Any) -> Any:
        return self.chain.transactor.call(lambda: self.contract.functions[fn](*args).call(), fn)

    def decode_logs(self, logs: Sequence[Any]) -> list[Event]:
        out = []
        for log in logs:
            if to_checksum_address(log["address"]) != self.address or not log["topics"]:
                continue
            name = self._events.get(bytes(log["topics"][0]))
            if name is None:
                continue
            decoded = self.contract.events[name]().process_log(log)
            out.append(
                Event(
                    name=name,
                    args=dict(decoded["args"]),
                    block=int(log["blockNumber"]),
                    tx_hash="0x" + bytes(log["transactionHash"]).hex(),
                    log_index=int(log["logIndex"]),
                    address=self.address,
                )
            )
        return out

    def _event(self, receipt: TxReceipt, name: str) -> Event:
        for ev in self.decode_logs(receipt["logs"]):
            if ev.name == name:
                return ev
        raise ChainError(f"transaction {receipt['transactionHash'].hex()} emitted no {name} event")

    def events(self, *, from_block: int = 0, to_block: int | str = "latest") -> list[Event]:
        """Every event this contract emitted in the block range, oldest first."""
        logs = self.chain.w3.eth.get_logs(
            {"address": self.address, "fromBlock": from_block, "toBlock": to_block}  # type: ignore[typeddict-item]
        )
        return self.decode_logs(logs)
