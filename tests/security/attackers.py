"""What the security suite attacks with, and the market it attacks.

`Raw` is an attacker's own client: the Marketplace's public ABI, web3 and
eth-account, and nothing of Sterling's SDK, so no client-side check can
stand between the attacker and the chain. `Arena` is a whole market with a
real enclave worker (simulated TEE), real sealing and real storage, on the
embedded EVM or on anvil.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from web3 import Web3
from web3.exceptions import ContractLogicError

from sterling.chain.deploy import ensure_deployment
from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain
from sterling.chain.units import to_delta
from sterling.crypto import seal
from sterling.data.dataset import Dataset, Schema
from sterling.enclave.tee import SimulatedTee
from sterling.enclave.worker import Worker, WorkerOptions
from sterling.privacy.job import Job
from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset
from sterling.sdk.trust import Trust
from sterling.storage.blobs import BlobStore

__all__ = ["Arena", "Raw", "Sent", "make_arena", "tabular"]

ETH = 10**18
REVERTS = (ContractLogicError, TransactionFailed)
WEIGHTS = np.array([1.5, -2.0, 1.0, 0.5, -1.0, 2.0])


def tabular(rows: int, seed: int) -> Dataset:
    """A separable two-class task with six features (as tests/integration/enclave_world.py)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    y = (x @ WEIGHTS > 0).astype(np.int64)
    return Dataset(x, y, Schema("tabular", (6,), "float32", ("healthy", "sick"), rows))


@dataclass(frozen=True)
class Sent:
    """What happened to one raw transaction: mined and succeeded, or reverted and why."""

    ok: bool
    reason: str = ""
    receipt: Any = None


class Raw:
    """An attacker's hand-built transactions to the Marketplace (web3 + eth-account only)."""

    def __init__(self, w3: Web3, marketplace: str, account: LocalAccount) -> None:
        abi_file = resources.files("sterling.chain") / "artifacts" / "Marketplace.json"
        abi = json.loads(abi_file.read_text(encoding="utf-8"))["abi"]
        self.w3 = w3
        self.account = account
        self.contract = w3.eth.contract(address=Web3.to_checksum_address(marketplace), abi=abi)

    def send(self, fn: str, *args: Any, value: int = 0, gas: int = 3_000_000) -> Sent:
        """Sign and send `fn(*args)`; its revert reason is read by replaying it as a call first."""
        data = self.contract.encode_abi(fn, args=list(args))
        call = {"from": self.account.address, "to": self.contract.address, "data": data, "value": value}
        reason = self._reason(call)
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        tx = {
            **call,
            "gas": gas,
            "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
            "chainId": self.w3.eth.chain_id,
            "maxFeePerGas": 2 * base + 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
        signed = self.account.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except REVERTS as exc:  # the embedded EVM refuses a reverting transaction outright
            return Sent(False, reason or self._message(exc))
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)
        if receipt["status"] != 1 and not reason:
            # It passed as a call but reverted when mined (another transaction got in first):
            # replay it on the state it was mined on.
            reason = self._reason(call, block=max(int(receipt["blockNumber"]) - 1, 0)) or "reverted"
        return Sent(receipt["status"] == 1, reason, receipt)

    @staticmethod
    def _message(exc: Exception) -> str:
        return str(getattr(exc, "message", "") or exc) or repr(exc)

    def _reason(self, call: dict[str, Any], block: int | str = "latest") -> str:
        """Why `call` reverts on `block`'s state, or "" when it does not."""
        try:
            self.w3.eth.call(call, block_identifier=block)  # type: ignore[arg-type]
        except REVERTS as exc:
            return self._message(exc)
        return ""

    def deploy(self, vyper_source: str) -> str:
        """Compile and deploy the attacker's own Vyper contract; returns its address."""
        from vyper import compile_code

        out = compile_code(vyper_source, output_formats=["bytecode"])
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        tx = {
            "from": self.account.address,
            "data": out["bytecode"],
            "value": 0,
            "gas": 3_000_000,
            "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
            "chainId": self.w3.eth.chain_id,
            "maxFeePerGas": 2 * base + 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
        tx_hash = self.w3.eth.send_raw_transaction(self.account.sign_transaction(tx).raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)
        assert receipt["status"] == 1
        return str(receipt["contractAddress"])

    def view(self, fn: str, *args: Any) -> Any:
        return self.contract.functions[fn](*args).call()


@dataclass
class Arena:
    """A market on one chain: a Marketplace, a real registered worker, storage, providers, consumers."""

    chain: Chain
    market: Marketplace
    state: Path
    store: BlobStore
    worker: Worker
    admin: LocalAccount
    #: What the arena's clients seal to: its own simulated enclave (see make_arena).
    trust: Trust = field(default_factory=Trust)
    consumer_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    logs: list[str] = field(default_factory=list)

    def account(self, ether: int = 5) -> LocalAccount:
        """A fresh account of its own, funded from the chain's development account."""
        acct: LocalAccount = Account.create()
        self.chain.fund(acct.address, ether * ETH)
        return acct

    def raw(self, account: LocalAccount, market: Marketplace | None = None) -> Raw:
        return Raw(self.chain.w3, (market or self.market).address, account)

    def list_data(
        self,
        dataset: Dataset,
        provider: LocalAccount,
        *,
        contract: str | None = None,
        budget: float = 5.0,
        cap: float = 2.0,
        price_per_job: int = 10**15,
    ) -> int:
        """An honest provider's listing, through the SDK."""
        sealed = seal_dataset(dataset, self.store, name=os.urandom(3).hex(), contract_source=contract)
        terms = ListingTerms(price_per_job, 10**15, budget, cap, 1e-5)
        return publish(
            self.market, provider, sealed, terms, enclave=choose_enclave(self.market, trust=self.trust)
        ).listing_id

    def job(self, listing_ids: list[int], **overrides: Any) -> Job:
        """A small, quick job: 8 steps of logistic regression at a fixed noise, ε 2 reserved per listing.

        σ 12 keeps even a 50-row listing (q 0.64) within the reservation under replace-one (ε ≈ 1.2).
        """
        doc: dict[str, Any] = {
            "name": "security job",
            "purpose": "research",
            "listings": [{"listing_id": lid, "epsilon": 2.0} for lid in listing_ids],
            "model": {"layers": [{"type": "linear", "out": 2}]},
            "training": {
                "steps": 8,
                "expected_batch_size": 32,
                "noise_multiplier": 12.0,
                "learning_rate": 1.0,
                "clipping_norm": 1.0,
            },
            "evaluation": {"holdout_fraction": 0.0, "metrics": ["accuracy"]},
            "payment_cap_wei": ETH,
        }
        for key, value in overrides.items():
            doc[key] = {**doc[key], **value} if isinstance(value, dict) and key in doc else value
        return Job.parse(doc)

    def hand_made(
        self,
        consumer: LocalAccount,
        job: Job,
        *,
        market: Marketplace | None = None,
        seal_for: Marketplace | None = None,
        value: int = ETH // 10,
    ) -> int:
        """A job submitted with a raw transaction: sealed and stored by hand, no client-side checks."""
        market = market or self.market
        sealed_for = seal_for or market
        pub = seal.public_bytes(self.consumer_key)
        binding = seal.job_body_binding(
            self.chain.chain_id, sealed_for.address, consumer=consumer.address, consumer_key=pub
        )
        ref = self.store.put_bytes(seal.seal(job.canonical(), self.worker.keys.public_key, binding))
        before = market.job_count()
        sent = self.raw(consumer, market).send(
            "submit_job",
            [a.listing_id for a in job.listings],
            [round(a.epsilon * 10**6) for a in job.listings],
            [2**256 - 1] * len(job.listings),  # any price: only the escrow check applies
            to_delta(job.training.delta),
            pub,
            ref.sha256,
            ref.uri,
            value=value,
        )
        assert sent.ok, sent.reason
        assert market.job_count() == before + 1
        return before + 1

    def failed_reason(self, job_id: int, market: Marketplace | None = None) -> str:
        (event,) = [e for e in (market or self.market).job_events(job_id) if e.name == "JobFailed"]
        return str(event.args["reason"])


def make_arena(chain: Chain, tmp: Path, *, name: str = "w1") -> Arena:
    """Deploy a Marketplace that trusts the simulated platform, and register a real worker on it."""
    state = tmp / "chain"
    admin = chain.dev_accounts[0]
    deployment, _ = ensure_deployment(chain, state, deployer=admin, lease_seconds=600)
    market = Marketplace.at(chain, deployment.marketplace)
    store = BlobStore(tmp / "blobs")
    arena_logs: list[str] = []
    tee = SimulatedTee(state)
    worker = Worker.open(
        market,
        tee,
        state / "enclave",
        store,
        # Heartbeats every 30 s: the suite's jobs finish well within one, so none is sent mid-job.
        options=WorkerOptions(name=name, progress_seconds=30.0),
        log=arena_logs.append,
    )
    worker.register(admin=admin)
    return Arena(
        chain=chain,
        market=market,
        state=state,
        store=store,
        worker=worker,
        admin=admin,
        logs=arena_logs,
        trust=Trust.of(tee.measurement(), tee.platform_key.address, simulated=True),
    )
