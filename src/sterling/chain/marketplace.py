"""The Marketplace facade: one typed client over Sterling's three contracts.

The Marketplace contract (listings, budgets, jobs, settlement) is the public
address; the EnclaveRegistry (admin, attestation signer, measurements,
enclaves) and PredictionFees (per-prediction fees) are found from it and
reached through this one client, so the rest of Sterling never needs to know
which contract a call lands on. One method per contract function, keyword
arguments after the first, typed results. Transactions are signed by the
`LocalAccount` passed in; reverts become `ContractRevert` carrying the
contract's reason (``marketplace: ...``, ``registry: ...``, ``fees: ...``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3.types import TxReceipt

from sterling.chain import digests
from sterling.chain.contract import ContractClient, as_bytes
from sterling.chain.fees import PredictionFees
from sterling.chain.node import Chain
from sterling.chain.policies import AllowListPolicy, CredentialPolicy
from sterling.chain.pools import Pools
from sterling.chain.registry import EnclaveRegistry
from sterling.chain.types import (
    ZERO32,
    Allocation,
    Budget,
    Enclave,
    Event,
    Job,
    JobState,
    Listing,
    Terms,
)
from sterling.errors import ContractRevert, DeploymentNotFound, NotFound, UsageError

__all__ = ["AllowListPolicy", "CredentialPolicy", "EnclaveRegistry", "Marketplace", "PredictionFees"]


class Marketplace(ContractClient):
    artifact_name = "Marketplace"
    #: The Pools contract beside this Marketplace, when the caller knows it (a deployment records
    #: it); a pool listing names its Pools contract itself, as its provider.
    pools: Pools | None = None

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        deployer: LocalAccount,
        *,
        attestation_signer: str,
        lease_seconds: int = 900,
        measurements: Sequence[bytes] = (),
    ) -> Marketplace:
        """Deploy the registry, the Marketplace and PredictionFees, and bind them together.

        `attestation_signer` and `measurements` are in force from the start (public before
        any data is listed); later additions wait the registry's `CHANGE_DELAY`.
        """
        registry = EnclaveRegistry.deploy(
            chain, deployer, attestation_signer=attestation_signer, measurements=measurements
        )
        receipt = cls._deploy(chain, deployer, registry.address, lease_seconds)
        market = cls(chain, str(receipt["contractAddress"]))
        fees = PredictionFees.deploy(chain, deployer, marketplace=market.address)
        registry.bind(deployer, marketplace=market.address, prediction_fees=fees.address)
        return market

    @classmethod
    def at(cls, chain: Chain, address: str) -> Marketplace:
        """Attach to a deployed Marketplace; refuse an address with no code or a registry not bound to it."""
        client = cls(chain, address)
        if not client.exists():
            raise DeploymentNotFound(f"no contract at {address} on chain {chain.chain_id}")
        try:
            bound = client.registry.marketplace() == client.address and client.fees.exists()
        except ContractRevert as exc:
            raise DeploymentNotFound(f"{address} is not a Sterling Marketplace: {exc}") from exc
        if not bound:
            raise DeploymentNotFound(f"the registry of {address} is not bound to it")
        return client

    @cached_property
    def registry(self) -> EnclaveRegistry:
        return EnclaveRegistry(self.chain, str(self._call("registry")))

    @cached_property
    def fees(self) -> PredictionFees:
        return PredictionFees(self.chain, self.registry.prediction_fees())

    @property
    def contracts(self) -> tuple[ContractClient, ...]:
        """The three contracts, Marketplace first."""
        return (self, self.registry, self.fees)

    # ---------------------------------------------------------------- admin

    def admin(self) -> str:
        return self.registry.admin()

    def attestation_signer(self) -> str:
        """The attestation signer in force now."""
        return self.registry.attestation_signer()

    def pending_signer(self) -> str | None:
        """An announced attestation signer not yet in force, or None."""
        signer = self.registry.pending_signer()
        if signer is None or self.chain.now() >= self.registry.signer_effective_at():
            return None
        return signer

    def signer_effective_at(self) -> int:
        return self.registry.signer_effective_at()

    def change_delay(self) -> int:
        return self.registry.change_delay()

    def lease_seconds(self) -> int:
        return int(self._call("lease_seconds"))

    def max_lease_seconds(self) -> int:
        return int(self._call("MAX_LEASE_SECONDS"))

    def max_pending_seconds(self) -> int:
        return int(self._call("MAX_PENDING_SECONDS"))

    def max_run_seconds(self) -> int:
        return int(self._call("MAX_RUN_SECONDS"))

    def allow_measurement(self, admin: LocalAccount, measurement: bytes, *, allowed: bool = True) -> int:
        """Announce `measurement` (it takes effect `change_delay()` later), or revoke it at once.

        Returns when the change takes effect (chain time, seconds).
        """
        if allowed:
            return self.registry.allow_measurement(admin, measurement)
        self.registry.revoke_measurement(admin, measurement)
        return self.chain.now()

    def allow_measurement_now(self, admin: LocalAccount, measurement: bytes) -> None:
        """On a development chain only: announce `measurement` and move the clock past the delay.

        Time travel is what an embedded or anvil chain offers. On any other chain the
        measurement is announced and `UsageError` says when it takes effect, so the delay
        holds wherever it protects anyone.
        """
        effective_at = self.measurement_effective_at(measurement) or self.allow_measurement(
            admin, measurement
        )
        wait = effective_at - self.chain.now()
        if wait <= 0:
            return
        if self.chain.kind not in ("embedded", "anvil"):
            raise UsageError(
                f"measurement 0x{measurement.hex()} is announced and takes effect at {effective_at} "
                f"(in {wait} s); only a development chain can move its clock past the delay"
            )
        self.chain.advance_time(wait)

    def measurement_effective_at(self, measurement: bytes) -> int:
        return self.registry.measurement_effective_at(measurement)

    def set_lease_seconds(self, admin: LocalAccount, seconds: int) -> None:
        self._send(admin, "set_lease_seconds", seconds)

    def set_attestation_signer(self, admin: LocalAccount, signer: str) -> int:
        """Announce a new attestation signer; returns when it takes effect."""
        return self.registry.set_attestation_signer(admin, signer)

    def transfer_admin(self, admin: LocalAccount, new_admin: str) -> None:
        self.registry.transfer_admin(admin, new_admin)

    def revoke_enclave(self, admin: LocalAccount, enclave: str) -> None:
        self.registry.revoke_enclave(admin, enclave)

    # ------------------------------------------------------------- enclaves

    def attestation_digest(self, *, measurement: bytes, enclave: str, hpke_public_key: bytes) -> bytes:
        return digests.attestation_digest(
            chain_id=self.chain.chain_id,
            marketplace=self.address,
            measurement=measurement,
            enclave=enclave,
            hpke_public_key=hpke_public_key,
        )

    def register_enclave(
        self, enclave: LocalAccount, *, measurement: bytes, hpke_public_key: bytes, attestation: bytes
    ) -> None:
        self.registry.register_enclave(
            enclave, measurement=measurement, hpke_public_key=hpke_public_key, attestation=attestation
        )

    def enclave(self, address: str) -> Enclave:
        return self.registry.enclave(address)

    def is_enclave(self, address: str) -> bool:
        return self.registry.is_enclave(address)

    def live_enclaves(self) -> list[Enclave]:
        """Registered enclaves whose measurement is still allowed, newest first (from events)."""
        seen: dict[str, None] = {}
        for ev in reversed(self.registry.events()):
            if ev.name == "EnclaveRegistered":
                seen.setdefault(str(ev.args["enclave"]), None)
        return [self.enclave(a) for a in seen if self.is_enclave(a)]

    def measurement_allowed(self, measurement: bytes) -> bool:
        return self.registry.measurement_allowed(measurement)

    def enclave_count(self) -> int:
        return self.registry.enclave_count()

    # ------------------------------------------------------------- listings

    def publish(
        self,
        provider: LocalAccount,
        *,
        data_uri: str,
        data_hash: bytes,
        sealed_key: bytes,
        terms: Terms,
        epsilon_budget: int,
        delta: int,
        contract_hash: bytes = bytes(32),
    ) -> int:
        """Publish new data; returns the listing id. Epsilon in micro-ε, delta in 1e-18."""
        receipt = self._send(
            provider,
            "publish",
            data_uri,
            data_hash,
            sealed_key,
            contract_hash,
            terms.as_tuple(),
            epsilon_budget,
            delta,
        )
        return int(self._event(receipt, "ListingPublished").args["listing_id"])

    def derive(
        self, provider: LocalAccount, parent_id: int, *, terms: Terms, contract_hash: bytes = bytes(32)
    ) -> int:
        """Re-list `parent_id`'s data under new terms, on the same budget; returns the new id."""
        receipt = self._send(provider, "derive", parent_id, contract_hash, terms.as_tuple())
        return int(self._event(receipt, "ListingPublished").args["listing_id"])

    def withdraw_listing(self, provider: LocalAccount, listing_id: int) -> None:
        self._send(provider, "withdraw_listing", listing_id)

    def listing_count(self) -> int:
        return int(self._call("listing_count"))

    def budget(self, data_hash: bytes) -> Budget:
        owner, total, spent, reserved, delta = self._call("budgets", data_hash)
        return Budget(str(owner), int(total), int(spent), int(reserved), int(delta))

    def listing(self, listing_id: int) -> Listing:
        if not 0 < listing_id <= self.listing_count():
            raise NotFound(f"no listing {listing_id} (there are {self.listing_count()})")
        raw = self._call("listing", listing_id)
        provider, data_hash, uri, sealed, chash, terms, parent, active = raw
        t = Terms(
            int(terms[0]), int(terms[1]), int(terms[2]), str(terms[3]), as_bytes(terms[4]), int(terms[5])
        )
        return Listing(
            id=listing_id,
            provider=str(provider),
            data_hash=as_bytes(data_hash),
            data_uri=str(uri),
            sealed_key=as_bytes(sealed),
            contract_hash=as_bytes(chash),
            terms=t,
            parent=int(parent),
            active=bool(active),
            budget=self.budget(as_bytes(data_hash)),
        )

    def listings(self, *, open_only: bool = False) -> Iterator[Listing]:
        for i in range(1, self.listing_count() + 1):
            listing = self.listing(i)
            if listing.open or not open_only:
                yield listing

    def remaining_budget(self, data_hash: bytes) -> int:
        return int(self._call("remaining_budget", data_hash))

    def is_open(self, listing_id: int) -> bool:
        return bool(self._call("is_open", listing_id))

    def list_price(self, listing_id: int, micro_epsilon: int) -> int:
        return int(self._call("list_price", listing_id, micro_epsilon))

    def quote(self, consumer: str, listing_id: int, micro_epsilon: int) -> int:
        """What `consumer` pays for `micro_epsilon` on the listing, policy included."""
        return int(self._call("quote", to_checksum_address(consumer), listing_id, micro_epsilon))

    # ----------------------------------------------------------------- jobs

    def submit_job(
        self,
        consumer: LocalAccount,
        *,
        listing_ids: Sequence[int],
        epsilons: Sequence[int],
        delta: int,
        consumer_key: bytes,
        job_hash: bytes,
        job_uri: str,
        value: int,
        max_prices: Sequence[int] | None = None,
    ) -> int:
        """Escrow `value` wei and reserve `epsilons` (micro-ε); returns the job id.

        `max_prices` is the most the consumer pays per listing: the chain refuses the job if a
        policy prices it higher at submission. Without it, the quotes read just before sending.
        """
        if max_prices is None:
            max_prices = [
                self.quote(consumer.address, lid, eps) for lid, eps in zip(listing_ids, epsilons, strict=True)
            ]
        receipt = self._send(
            consumer,
            "submit_job",
            list(listing_ids),
            list(epsilons),
            list(max_prices),
            delta,
            consumer_key,
            job_hash,
            job_uri,
            value=value,
        )
        return int(self._event(receipt, "JobSubmitted").args["job_id"])

    def cancel_job(self, consumer: LocalAccount, job_id: int) -> None:
        self._send(consumer, "cancel_job", job_id)

    def claim_job(self, enclave: LocalAccount, job_id: int) -> int:
        """Take the job's lease; returns its deadline (chain time, seconds)."""
        receipt = self._send(enclave, "claim_job", job_id)
        return int(self._event(receipt, "JobClaimed").args["lease_deadline"])

    def extend_lease(self, enclave: LocalAccount, job_id: int) -> int:
        receipt = self._send(enclave, "extend_lease", job_id)
        return int(self._event(receipt, "JobLeaseExtended").args["lease_deadline"])

    def report_progress(
        self, enclave: LocalAccount, job_id: int, *, step: int, steps: int, micro_epsilon: int
    ) -> int:
        """The holder's heartbeat: public progress on chain, and the lease renewed; returns the deadline."""
        receipt = self._send(enclave, "report_progress", job_id, step, steps, micro_epsilon)
        return int(self._event(receipt, "JobProgress").args["lease_deadline"])

    def expire_job(self, caller: LocalAccount, job_id: int) -> None:
        """Return a job whose lease is over to the pool, or cancel one past its pending deadline (refund)."""
        self._send(caller, "expire_job", job_id)

    def settlement_digest(
        self,
        job_id: int,
        *,
        result_hash: bytes,
        model_uri: str,
        sealed_model_key: bytes,
        payouts: Sequence[int],
        spent: Sequence[int],
        weights: Sequence[int],
        receipt_hash: bytes,
    ) -> bytes:
        return digests.settlement_digest(
            chain_id=self.chain.chain_id,
            marketplace=self.address,
            job_id=job_id,
            result_hash=result_hash,
            model_uri=model_uri,
            sealed_model_key=sealed_model_key,
            payouts=payouts,
            spent=spent,
            weights=weights,
            receipt_hash=receipt_hash,
        )

    def complete_job(
        self,
        enclave: LocalAccount,
        job_id: int,
        *,
        result_hash: bytes,
        model_uri: str,
        sealed_model_key: bytes,
        payouts: Sequence[int],
        spent: Sequence[int],
        weights: Sequence[int],
        receipt_hash: bytes,
        receipt_uri: str,
        signature: bytes | None = None,
    ) -> TxReceipt:
        """Settle `job_id`, charging `spent` (micro-ε) as the privacy receipt at `receipt_uri` accounts.

        Signs the settlement digest with `enclave` unless given `signature`.
        """
        if signature is None:
            digest = self.settlement_digest(
                job_id,
                result_hash=result_hash,
                model_uri=model_uri,
                sealed_model_key=sealed_model_key,
                payouts=payouts,
                spent=spent,
                weights=weights,
                receipt_hash=receipt_hash,
            )
            signature = digests.sign_digest(enclave, digest)
        return self._send(
            enclave,
            "complete_job",
            job_id,
            result_hash,
            model_uri,
            sealed_model_key,
            list(payouts),
            list(spent),
            list(weights),
            receipt_hash,
            receipt_uri,
            signature,
        )

    def fail_job(
        self,
        enclave: LocalAccount,
        job_id: int,
        *,
        reason: str,
        spent: Sequence[int] = (),
        receipt_hash: bytes = ZERO32,
        receipt_uri: str = "",
    ) -> None:
        """Fail the job with a full refund; the reason is cut to the contract's 256 bytes of UTF-8.

        With `spent` empty nothing is charged (no data key was released). Otherwise `spent`
        has one micro-ε figure per listing, charged to its budget, and `receipt_hash` is the
        sha256 of the privacy receipt that accounts for it; the rest of each reservation is released.
        """
        text = reason.encode()[:256].decode(errors="ignore")
        self._send(enclave, "fail_job", job_id, text, list(spent), receipt_hash, receipt_uri)

    def job_count(self) -> int:
        return int(self._call("job_count"))

    def job(self, job_id: int) -> Job:
        if not 0 < job_id <= self.job_count():
            raise NotFound(f"no job {job_id} (there are {self.job_count()})")
        raw = self._call("job", job_id)
        allocations = tuple(Allocation(*(int(x) for x in a)) for a in self._call("allocations", job_id))
        (consumer, state, escrow, delta, ckey, jhash, juri, enclave, deadline, rhash, muri, smk, pending) = (
            raw
        )
        return Job(
            id=job_id,
            consumer=str(consumer),
            state=JobState(int(state)),
            escrow=int(escrow),
            delta=int(delta),
            consumer_key=as_bytes(ckey),
            job_hash=as_bytes(jhash),
            job_uri=str(juri),
            enclave=str(enclave),
            lease_deadline=int(deadline),
            result_hash=as_bytes(rhash),
            model_uri=str(muri),
            sealed_model_key=as_bytes(smk),
            allocations=allocations,
            pending_deadline=int(pending),
        )

    def decode_logs(self, logs: Sequence[Any]) -> list[Event]:
        """Decode logs of any of the three contracts, in the order given."""
        by_address = {c.address: c for c in self.contracts}
        out: list[Event] = []
        for log in logs:
            client = by_address.get(to_checksum_address(log["address"]))
            if client is self:
                out.extend(super().decode_logs([log]))
            elif client is not None:
                out.extend(client.decode_logs([log]))
        return out

    def decode_function(self, to: str, data: bytes) -> str | None:
        """The name of the function a transaction to one of the three contracts calls, else None."""
        client = {c.address: c for c in self.contracts}.get(to_checksum_address(to))
        if client is None or len(data) < 4:
            return None
        try:
            fn, _ = client.contract.decode_function_input(data)
        except ValueError:
            return None
        return str(fn.fn_name)

    def events(self, *, from_block: int = 0, to_block: int | str = "latest") -> list[Event]:
        """Every event of the Marketplace, its registry and its fee contract in the range, oldest first."""
        logs = self.chain.w3.eth.get_logs(
            {
                "address": [c.address for c in self.contracts],
                "fromBlock": from_block,
                "toBlock": to_block,  # type: ignore[typeddict-item]
            }
        )
        return self.decode_logs(_in_order(logs))

    def job_events(self, job_id: int, *, from_block: int = 0) -> list[Event]:
        """Every event about `job_id` (its first indexed argument), oldest first, fees included."""
        topic = "0x" + job_id.to_bytes(32, "big").hex()
        logs = self.chain.w3.eth.get_logs(
            {
                "address": [self.address, self.fees.address],
                "fromBlock": from_block,
                "topics": [None, topic],
            }
        )
        return [ev for ev in self.decode_logs(_in_order(logs)) if ev.args.get("job_id") == job_id]

    def jobs(self) -> Iterator[Job]:
        for i in range(1, self.job_count() + 1):
            yield self.job(i)

    # ------------------------------------------------------------- payments

    def pay_for_predictions(self, payer: LocalAccount, job_id: int, *, count: int, value: int) -> None:
        """Pay for `count` predictions: count × each listing's price, the rest split by settlement weights."""
        self.fees.pay_for_predictions(payer, job_id, count=count, value=value)

    def prediction_price(self, job_id: int) -> int:
        """Wei one prediction from `job_id`'s model costs at least: the sum of its listings' prices."""
        return sum(
            self.listing(a.listing_id).terms.price_per_prediction for a in self.job(job_id).allocations
        )

    def predictions_digest(
        self, job_id: int, *, payer: str, count: int, batch_hash: bytes, weights: Sequence[int]
    ) -> bytes:
        return self.fees.predictions_digest(
            job_id, payer=payer, count=count, batch_hash=batch_hash, weights=weights
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
        """Pay for a batch the enclave served: count × prices, the rest split by the weights it signed."""
        return self.fees.pay_for_attributed_predictions(
            payer,
            job_id,
            count=count,
            batch_hash=batch_hash,
            weights=weights,
            enclave=enclave,
            signature=signature,
            value=value,
        )

    def batch_paid(self, batch_hash: bytes) -> bool:
        return self.fees.batch_paid(batch_hash)

    def balance_of(self, account: str) -> int:
        """Wei credited to `account` (payouts, refunds, fees) and not yet withdrawn, across all contracts."""
        return int(self._call("balances", to_checksum_address(account))) + self.fees.balance_of(account)

    def withdraw(self, account: LocalAccount) -> int:
        """Pay `account` everything credited to it, from each contract that holds some; returns the wei.

        With nothing to withdraw anywhere the Marketplace's refusal is raised.
        """
        total = 0
        if int(self._call("balances", account.address)) > 0 or self.fees.balance_of(account.address) == 0:
            receipt = self._send(account, "withdraw")
            total += int(self._event(receipt, "Withdrawal").args["amount"])
        if self.fees.balance_of(account.address) > 0:
            total += self.fees.withdraw(account)
        return total

    def liabilities(self) -> int:
        """Open escrow plus credited balances, across the Marketplace and PredictionFees."""
        return int(self._call("liabilities")) + self.fees.liabilities()

    def ether_balance(self) -> int:
        """Ether the Marketplace and PredictionFees hold; always equals `liabilities()`."""
        return sum(int(self.chain.w3.eth.get_balance(c.address)) for c in (self, self.fees))


def _in_order(logs: Sequence[Any]) -> list[Any]:
    """Logs of several contracts in chain order (a node may return them per address)."""
    return sorted(logs, key=lambda log: (int(log["blockNumber"]), int(log["logIndex"])))
