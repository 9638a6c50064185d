"""Withdrawals reach any wallet: all gas forwarded, balance zeroed first, one payment per credit.

The wallets are small Vyper contracts beside this file, compiled here with vyper's API: one that
writes storage when paid (as a Safe does), the same behind a Safe-like delegatecall proxy, one that
re-enters `withdraw` while it is being paid, and one that refuses ether.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import vyper
from web3.contract import Contract

from sterling.chain.units import to_delta, to_micro
from sterling.errors import ContractRevert

WALLETS = Path(__file__).parent / "wallets"
ETH = 10**18


@cache
def _compiled(name: str) -> tuple[list[dict[str, Any]], str, dict[str, int]]:
    out = vyper.compile_code(
        (WALLETS / f"{name}.vy").read_text(), output_formats=["abi", "bytecode", "layout"]
    )
    slots = {k: v["slot"] for k, v in out["layout"]["storage_layout"].items()}
    return out["abi"], out["bytecode"], slots


@dataclass
class Wallet:
    """A deployed test wallet (or a proxy, with its implementation's ABI) and who drives it."""

    contract: Contract
    market: Any
    slots: dict[str, int]

    @property
    def address(self) -> str:
        return str(self.contract.address)

    def execute(self, target: str, data: str, *, value: int = 0) -> None:
        m = self.market
        call = self.contract.encode_abi("execute", args=[target, data, value])
        m.chain.transactor.send(m.a.outsider, to=self.address, data=call, value=value, function="execute")

    def read(self, name: str) -> int:
        """A storage variable, read from the chain's state (a proxy returns no call data)."""
        raw = self.market.chain.w3.eth.get_storage_at(self.address, self.slots[name])
        return int.from_bytes(bytes(raw), "big")


def _deploy(market, name: str, *args: Any, abi_of: str | None = None) -> Wallet:  # type: ignore[no-untyped-def]
    abi, bytecode, _ = _compiled(name)
    w3 = market.chain.w3
    data = w3.eth.contract(abi=abi, bytecode=bytecode).constructor(*args).data_in_transaction
    receipt = market.chain.transactor.send(market.a.outsider, to=None, data=data, function=f"deploy {name}")
    address = receipt["contractAddress"]
    abi, _, slots = _compiled(abi_of or name)
    return Wallet(w3.eth.contract(address=address, abi=abi), market, slots)


def _fund(market, wallet: Wallet) -> None:  # type: ignore[no-untyped-def]
    market.chain.transactor.send(market.a.outsider, to=wallet.address, data=b"", value=ETH, function="fund")


def _storage_wallet(market):  # type: ignore[no-untyped-def]
    return _deploy(market, "StorageWallet")


def _safe(market):  # type: ignore[no-untyped-def]
    implementation = _deploy(market, "StorageWallet")
    return _deploy(market, "SafeProxy", implementation.address, abi_of="StorageWallet")


def _refund_to(market, wallet: Wallet) -> int:  # type: ignore[no-untyped-def]
    """The wallet submits a job and cancels it: its whole escrow is credited to it."""
    m = market.m
    lid = market.publish()
    price = m.quote(wallet.address, lid, to_micro(1))
    submit = m.contract.encode_abi(
        "submit_job",
        args=[[lid], [to_micro(1)], [price], to_delta(1e-5), os.urandom(32), os.urandom(32), "memory://job"],
    )
    wallet.execute(m.address, submit, value=price)
    wallet.execute(m.address, m.contract.encode_abi("cancel_job", args=[m.job_count()]))
    assert m.balance_of(wallet.address) == price
    return price


@pytest.mark.parametrize("make", [_storage_wallet, _safe], ids=["storage-writing wallet", "safe-like proxy"])
def test_a_wallet_whose_receive_writes_storage_is_paid(market, make) -> None:  # type: ignore[no-untyped-def]
    wallet = make(market)
    _fund(market, wallet)
    assert wallet.read("receipts") == 1  # funding it went through its receive, too
    receive = market.chain.w3.eth.estimate_gas(
        {"from": market.a.outsider.address, "to": wallet.address, "value": 1}
    )
    assert receive - 21_000 > 2_300  # more than `send` would have forwarded
    owed = _refund_to(market, wallet)
    before = market.chain.w3.eth.get_balance(wallet.address)
    wallet.execute(market.m.address, market.m.contract.encode_abi("withdraw", args=[]))
    assert market.chain.w3.eth.get_balance(wallet.address) == before + owed
    assert wallet.read("received") == ETH + owed
    assert wallet.read("receipts") == 2
    assert market.m.balance_of(wallet.address) == 0
    assert market.m.liabilities() == market.m.ether_balance()


def test_a_reentrant_receiver_is_paid_once(market) -> None:  # type: ignore[no-untyped-def]
    wallet = _deploy(market, "ReentrantWallet")
    _fund(market, wallet)
    owed = _refund_to(market, wallet)
    ether = market.m.ether_balance()
    wallet.execute(market.m.address, market.m.contract.encode_abi("withdraw", args=[]))
    assert wallet.read("reentry_tried")
    assert not wallet.read("reentry_succeeded")
    assert wallet.read("received") == ETH + owed  # funding plus one payment, not two
    assert market.m.ether_balance() == ether - owed == market.m.liabilities()
    withdrawals = [e for e in market.m.events() if e.name == "Withdrawal"]
    assert [(e.args["account"], e.args["amount"]) for e in withdrawals] == [(wallet.address, owed)]


def test_a_wallet_that_refuses_ether_keeps_its_credit(market) -> None:  # type: ignore[no-untyped-def]
    wallet = _deploy(market, "RefusingWallet")
    m = market.m
    lid = market.publish()
    price = m.quote(wallet.address, lid, to_micro(1))
    market.chain.transactor.send(
        market.a.outsider,
        to=wallet.address,
        data=wallet.contract.encode_abi(
            "execute",
            args=[
                m.address,
                m.contract.encode_abi(
                    "submit_job",
                    args=[
                        [lid], [to_micro(1)], [price], to_delta(1e-5), os.urandom(32), os.urandom(32), "memory://j"
                    ],
                ),
                price,
            ],
        ),
        value=price,
        function="execute",
    )  # fmt: skip
    wallet.execute(m.address, m.contract.encode_abi("cancel_job", args=[m.job_count()]))
    with pytest.raises(ContractRevert, match="marketplace: transfer to the caller failed"):
        wallet.execute(m.address, m.contract.encode_abi("withdraw", args=[]))
    assert m.balance_of(wallet.address) == price  # nothing lost: the withdrawal reverted whole
    assert m.liabilities() == m.ether_balance()


def test_withdraw_takes_everything_from_every_contract(live) -> None:  # type: ignore[no-untyped-def]
    lid = live.publish(price_per_prediction=7)
    jid = live.submit([lid], [1.0], value=10**15 + 10**16)
    live.m.claim_job(live.a.enclave, jid)
    live.complete(jid, payouts=[5_000], spent=[1], weights=[1])
    live.m.pay_for_predictions(live.a.consumer2, jid, count=3, value=100)
    provider = live.a.provider.address
    assert live.m.balance_of(provider) == 5_000 + 100
    block = live.chain.w3.eth.block_number + 1
    assert live.m.withdraw(live.a.provider) == 5_100
    assert live.m.balance_of(provider) == 0
    paid = {(e.address, e.args["amount"]) for e in live.m.events(from_block=block) if e.name == "Withdrawal"}
    assert paid == {(live.m.address, 5_000), (live.m.fees.address, 100)}
    with pytest.raises(ContractRevert, match="marketplace: nothing to withdraw"):
        live.m.withdraw(live.a.provider)
    assert live.m.liabilities() == live.m.ether_balance()
