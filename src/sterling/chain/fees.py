"""A typed client for PredictionFees: paying for predictions from a completed job's model."""

from __future__ import annotations

from collections.abc import Sequence

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3.types import TxReceipt

from sterling.chain import digests
from sterling.chain.contract import ContractClient
from sterling.chain.node import Chain


class PredictionFees(ContractClient):
    artifact_name = "PredictionFees"

    @classmethod
    def deploy(cls, chain: Chain, deployer: LocalAccount, *, marketplace: str) -> PredictionFees:
        receipt = cls._deploy(chain, deployer, to_checksum_address(marketplace))
        return cls(chain, str(receipt["contractAddress"]))

    def marketplace(self) -> str:
        return str(self._call("marketplace"))

    def pay_for_predictions(self, payer: LocalAccount, job_id: int, *, count: int, value: int) -> TxReceipt:
        return self._send(payer, "pay_for_predictions", job_id, count, value=value)

    def predictions_digest(
        self, job_id: int, *, payer: str, count: int, batch_hash: bytes, weights: Sequence[int]
    ) -> bytes:
        return digests.predictions_digest(
            chain_id=self.chain.chain_id,
            fees=self.address,
            job_id=job_id,
            payer=payer,
            count=count,
            batch_hash=batch_hash,
            weights=weights,
        )

    def pay_for_attributed_predictions(
        self,
        payer: LocalAccount,
        job_id: int,
        *,
        count: int,
        batch_hash: bytes,
        weights: Sequence[int],
        enclave: str,
        signature: bytes,
        value: int,
    ) -> TxReceipt:
        return self._send(
            payer,
            "pay_for_attributed_predictions",
            job_id,
            count,
            batch_hash,
            list(weights),
            to_checksum_address(enclave),
            signature,
            value=value,
        )

    def batch_paid(self, batch_hash: bytes) -> bool:
        return bool(self._call("used_batches", batch_hash))

    def balance_of(self, account: str) -> int:
        return int(self._call("balances", to_checksum_address(account)))

    def withdraw(self, account: LocalAccount) -> int:
        receipt = self._send(account, "withdraw")
        return int(self._event(receipt, "Withdrawal").args["amount"])

    def liabilities(self) -> int:
        return int(self._call("liabilities"))
