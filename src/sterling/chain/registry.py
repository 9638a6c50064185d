"""A typed client for the EnclaveRegistry: the admin, the attestation signer, measurements, enclaves.

Widening changes (a new signer, a new measurement) are announced and take
effect `CHANGE_DELAY` seconds later; the views here say what is in force now
and what is announced, so a provider's client can refuse an enclave it has
not confirmed.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from sterling.chain.contract import ContractClient, as_bytes
from sterling.chain.node import Chain
from sterling.chain.types import ZERO_ADDRESS, Enclave


class EnclaveRegistry(ContractClient):
    artifact_name = "EnclaveRegistry"

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        deployer: LocalAccount,
        *,
        attestation_signer: str,
        measurements: Sequence[bytes] = (),
    ) -> EnclaveRegistry:
        """Deploy with `attestation_signer` and `measurements` in force from the first block."""
        receipt = cls._deploy(chain, deployer, to_checksum_address(attestation_signer), list(measurements))
        return cls(chain, str(receipt["contractAddress"]))

    def bind(self, admin: LocalAccount, *, marketplace: str, prediction_fees: str) -> None:
        self._send(admin, "bind", to_checksum_address(marketplace), to_checksum_address(prediction_fees))

    def marketplace(self) -> str:
        return str(self._call("marketplace"))

    def prediction_fees(self) -> str:
        return str(self._call("prediction_fees"))

    # ---------------------------------------------------------------- admin

    def admin(self) -> str:
        return str(self._call("admin"))

    def transfer_admin(self, admin: LocalAccount, new_admin: str) -> None:
        self._send(admin, "transfer_admin", to_checksum_address(new_admin))

    def change_delay(self) -> int:
        """Seconds between announcing a signer or measurement and its taking effect."""
        return int(self._call("CHANGE_DELAY"))

    def attestation_signer(self) -> str:
        """The signer in force now."""
        return str(self._call("attestation_signer"))

    def pending_signer(self) -> str | None:
        """The announced signer, or None; it is in force from `signer_effective_at()` on."""
        signer = str(self._call("pending_signer"))
        return None if signer == ZERO_ADDRESS else signer

    def signer_effective_at(self) -> int:
        return int(self._call("signer_effective_at"))

    def set_attestation_signer(self, admin: LocalAccount, signer: str) -> int:
        """Announce `signer`; returns when it takes effect (chain time, seconds)."""
        receipt = self._send(admin, "set_attestation_signer", to_checksum_address(signer))
        return int(self._event(receipt, "AttestationSignerAnnounced").args["effective_at"])

    def allow_measurement(self, admin: LocalAccount, measurement: bytes) -> int:
        """Announce `measurement`; returns when enclaves with it may register."""
        receipt = self._send(admin, "allow_measurement", measurement)
        return int(self._event(receipt, "MeasurementAnnounced").args["effective_at"])

    def revoke_measurement(self, admin: LocalAccount, measurement: bytes) -> None:
        self._send(admin, "revoke_measurement", measurement)

    def measurement_allowed(self, measurement: bytes) -> bool:
        """Allowed now (announced and its delay over)."""
        return bool(self._call("allowed_measurements", measurement))

    def measurement_effective_at(self, measurement: bytes) -> int:
        """When `measurement` is or was allowed; 0 when it is neither allowed nor announced."""
        return int(self._call("measurement_effective_at", measurement))

    # ------------------------------------------------------------- enclaves

    def register_enclave(
        self, enclave: LocalAccount, *, measurement: bytes, hpke_public_key: bytes, attestation: bytes
    ) -> None:
        self._send(enclave, "register_enclave", measurement, hpke_public_key, attestation)

    def revoke_enclave(self, admin: LocalAccount, enclave: str) -> None:
        self._send(admin, "revoke_enclave", to_checksum_address(enclave))

    def enclave(self, address: str) -> Enclave:
        m, key, registered = self._call("enclaves", to_checksum_address(address))
        return Enclave(to_checksum_address(address), as_bytes(m), as_bytes(key), bool(registered))

    def is_enclave(self, address: str) -> bool:
        return bool(self._call("is_enclave", to_checksum_address(address)))

    def enclave_count(self) -> int:
        return int(self._call("enclave_count"))
