"""Typed clients for the policy contracts a listing may name."""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from sterling.chain.contract import ContractClient
from sterling.chain.node import Chain


class AllowListPolicy(ContractClient):
    """A policy that admits only allowed consumers, at the list price."""

    artifact_name = "AllowListPolicy"

    @classmethod
    def deploy(cls, chain: Chain, owner: LocalAccount, *, marketplace: str) -> AllowListPolicy:
        receipt = cls._deploy(chain, owner, to_checksum_address(marketplace))
        return cls(chain, str(receipt["contractAddress"]))

    def set_allowed(self, owner: LocalAccount, consumer: str, *, allowed: bool = True) -> None:
        self._send(owner, "set_allowed", to_checksum_address(consumer), allowed)

    def allowed(self, consumer: str) -> bool:
        return bool(self._call("allowed", to_checksum_address(consumer)))


class CredentialPolicy(ContractClient):
    """A credential registry: holders of an issuer's credential use the listing free."""

    artifact_name = "CredentialPolicy"

    @classmethod
    def deploy(
        cls, chain: Chain, deployer: LocalAccount, *, marketplace: str, issuer: str
    ) -> CredentialPolicy:
        receipt = cls._deploy(chain, deployer, to_checksum_address(marketplace), to_checksum_address(issuer))
        return cls(chain, str(receipt["contractAddress"]))

    def grant(self, issuer: LocalAccount, holder: str, *, expires: int) -> None:
        self._send(issuer, "grant", to_checksum_address(holder), expires)

    def revoke(self, issuer: LocalAccount, holder: str) -> None:
        self._send(issuer, "revoke", to_checksum_address(holder))

    def holds(self, holder: str) -> bool:
        return bool(self._call("holds", to_checksum_address(holder)))
