"""Deployments: deploy Sterling's contracts once, record where, reuse them after restarts.

A deployment is three contracts: the EnclaveRegistry, the Marketplace and
PredictionFees, bound together (`Marketplace.deploy`), and Pools beside them. A state folder holds
``deployment.json`` (chain id, addresses, block). When a recorded deployment
is still on the same chain, with the registry bound to its Marketplace, it is
reused; otherwise a fresh one is deployed and recorded (written atomically).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain
from sterling.chain.pools import Pools
from sterling.errors import DeploymentNotFound, UsageError
from sterling.files import atomic_write

DEPLOYMENT_FILE = "deployment.json"
SIM_PLATFORM_KEY_FILE = "simulated-platform.key"


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    marketplace: str
    attestation_signer: str
    deployer: str
    block: int
    registry: str = ""
    prediction_fees: str = ""
    pools: str = ""

    def save(self, state_dir: Path) -> Path:
        path = state_dir / DEPLOYMENT_FILE
        atomic_write(path, (json.dumps(asdict(self), indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, state_dir: Path) -> Deployment:
        path = state_dir / DEPLOYMENT_FILE
        if not path.exists():
            raise DeploymentNotFound(f"no deployment recorded in {state_dir} (run `sterling chain deploy`)")
        try:
            data = json.loads(path.read_text())
            return cls(
                chain_id=int(data["chain_id"]),
                marketplace=str(data["marketplace"]),
                attestation_signer=str(data["attestation_signer"]),
                deployer=str(data["deployer"]),
                block=int(data["block"]),
                registry=str(data.get("registry", "")),
                prediction_fees=str(data.get("prediction_fees", "")),
                pools=str(data.get("pools", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path} is not a valid deployment record: {exc}") from exc


def simulated_platform_key(state_dir: Path) -> LocalAccount:
    """The SIMULATION's attestation key: created once in the state folder.

    A hardware TEE's attestation is signed by the platform vendor; here no
    TEE exists, so a local key stands in for it and attests nothing real.
    """
    path = state_dir / SIM_PLATFORM_KEY_FILE
    if path.exists():
        existing: LocalAccount = Account.from_key(path.read_text().strip())
        return existing
    account: LocalAccount = Account.create()
    atomic_write(path, (account.key.hex() + "\n").encode(), mode=0o600)
    return account


def ensure_deployment(
    chain: Chain,
    state_dir: Path,
    *,
    deployer: LocalAccount,
    attestation_signer: str | None = None,
    lease_seconds: int = 900,
    measurements: Sequence[bytes] = (),
) -> tuple[Deployment, bool]:
    """The recorded deployment if it is still on this chain, else a new one.

    Returns the deployment and whether it was reused.
    """
    path = state_dir / DEPLOYMENT_FILE
    if path.exists():
        recorded = Deployment.load(state_dir)
        if recorded.chain_id == chain.chain_id and recorded.registry:
            with contextlib.suppress(DeploymentNotFound):
                Marketplace.at(chain, recorded.marketplace)
                if not recorded.pools:  # recorded before Pools existed: add it beside the others
                    pools = Pools.deploy(chain, deployer, marketplace=recorded.marketplace)
                    recorded = replace(recorded, pools=pools.address)
                    recorded.save(state_dir)
                return recorded, True
    signer = attestation_signer or simulated_platform_key(state_dir).address
    market = Marketplace.deploy(
        chain, deployer, attestation_signer=signer, lease_seconds=lease_seconds, measurements=measurements
    )
    deployment = Deployment(
        chain_id=chain.chain_id,
        marketplace=market.address,
        attestation_signer=signer,
        deployer=deployer.address,
        block=int(chain.w3.eth.block_number),
        registry=market.registry.address,
        prediction_fees=market.fees.address,
        pools=Pools.deploy(chain, deployer, marketplace=market.address).address,
    )
    deployment.save(state_dir)
    return deployment, False
