"""A typed client for the Marketplace contract.

One method per contract function, keyword arguments after the first, typed
results. Transactions are signed by the `LocalAccount` passed in; nothing
reaches into a node's wallet. Reverts become `ContractRevert` carrying the
contract's reason (``marketplace: ...``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from web3.contract import Contract
from web3.types import TxReceipt

from sterling.chain import artifacts, digests
from sterling.chain.node import Chain
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
from sterling.errors import ChainError, DeploymentNotFound, NotFound


def _bytes(value: Any) -> bytes:
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


class Marketplace(ContractClient):
    artifact_name = "Marketplace"

    @classmethod
    def deploy(
        cls, chain: Chain, deployer: LocalAccount, *, attestation_signer: str, lease_seconds: int = 900
    ) -> Marketplace:
        receipt = cls._deploy(chain, deployer, to_checksum_address(attestation_signer), lease_seconds)
        return cls(chain, str(receipt["contractAddress"]))

    @classmethod
    def at(cls, chain: Chain, address: str) -> Marketplace:
        """Attach to a deployed Marketplace; refuse an address with no code."""
        client = cls(chain, address)
        if not client.exists():
            raise DeploymentNotFound(f"no contract at {address} on chain {chain.chain_id}")
        return client

    # ---------------------------------------------------------------- admin

    def admin(self) -> str:
        return str(self._call("admin"))

    def attestation_signer(self) -> str:
        return str(self._call("attestation_signer"))

    def lease_seconds(self) -> int:
        return int(self._call("lease_seconds"))

    def allow_measurement(self, admin: LocalAccount, measurement: bytes, *, allowed: bool = True) -> None:
        self._send(admin, "allow_measurement", measurement, allowed)

    def set_lease_seconds(self, admin: LocalAccount, seconds: int) -> None:
        self._send(admin, "set_lease_seconds", seconds)

    def set_attestation_signer(self, admin: LocalAccount, signer: str) -> None:
        self._send(admin, "set_attestation_signer", to_checksum_address(signer))

    def transfer_admin(self, admin: LocalAccount, new_admin: str) -> None:
        self._send(admin, "transfer_admin", to_checksum_address(new_admin))

    def revoke_enclave(self, admin: LocalAccount, enclave: str) -> None:
        self._send(admin, "revoke_enclave", to_checksum_address(enclave))

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
        self._send(enclave, "register_enclave", measurement, hpke_public_key, attestation)

    def enclave(self, address: str) -> Enclave:
        m, key, registered = self._call("enclaves", to_checksum_address(address))
        return Enclave(to_checksum_address(address), _bytes(m), _bytes(key), bool(registered))

    def is_enclave(self, address: str) -> bool:
        return bool(self._call("is_enclave", to_checksum_address(address)))

    def live_enclaves(self) -> list[Enclave]:
        """Registered enclaves whose measurement is still allowed, newest first (from events)."""
        seen: dict[str, None] = {}
        for ev in reversed(self.events()):
            if ev.name == "EnclaveRegistered":
                seen.setdefault(str(ev.args["enclave"]), None)
        return [self.enclave(a) for a in seen if self.is_enclave(a)]

    def measurement_allowed(self, measurement: bytes) -> bool:
        return bool(self._call("allowed_measurements", measurement))

    def enclave_count(self) -> int:
        return int(self._call("enclave_count"))

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
        t = Terms(int(terms[0]), int(terms[1]), int(terms[2]), str(terms[3]), _bytes(terms[4]))
        return Listing(
            id=listing_id,
            provider=str(provider),
            data_hash=_bytes(data_hash),
            data_uri=str(uri),
            sealed_key=_bytes(sealed),
            contract_hash=_bytes(chash),
            terms=t,
            parent=int(parent),
            active=bool(active),
            budget=self.budget(_bytes(data_hash)),
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
    ) -> int:
        """Escrow `value` wei and reserve `epsilons` (micro-ε); returns the job id."""
        receipt = self._send(
            consumer,
            "submit_job",
            list(listing_ids),
            list(epsilons),
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
        (consumer, state, escrow, delta, ckey, jhash, juri, enclave, deadline, rhash, muri, smk) = raw
        return Job(
            id=job_id,
            consumer=str(consumer),
            state=JobState(int(state)),
            escrow=int(escrow),
            delta=int(delta),
            consumer_key=_bytes(ckey),
            job_hash=_bytes(jhash),
            job_uri=str(juri),
            enclave=str(enclave),
            lease_deadline=int(deadline),
            result_hash=_bytes(rhash),
            model_uri=str(muri),
            sealed_model_key=_bytes(smk),
            allocations=allocations,
        )

    def job_events(self, job_id: int, *, from_block: int = 0) -> list[Event]:
        """Every event about `job_id` (its first indexed argument), oldest first."""
        topic = "0x" + job_id.to_bytes(32, "big").hex()
        logs = self.chain.w3.eth.get_logs(
            {"address": self.address, "fromBlock": from_block, "topics": [None, topic]}
        )
        return [ev for ev in self.decode_logs(logs) if ev.args.get("job_id") == job_id]

    def jobs(self) -> Iterator[Job]:
        for i in range(1, self.job_count() + 1):
            yield self.job(i)

    # ------------------------------------------------------------- payments

    def pay_for_predictions(self, payer: LocalAccount, job_id: int, *, count: int, value: int) -> None:
        """Pay for `count` predictions, split by the weights recorded at settlement."""
        self._send(payer, "pay_for_predictions", job_id, count, value=value)

    def predictions_digest(
        self, job_id: int, *, payer: str, count: int, batch_hash: bytes, weights: Sequence[int]
    ) -> bytes:
        return digests.predictions_digest(
            chain_id=self.chain.chain_id,
            marketplace=self.address,
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
        """Pay for a batch the enclave served, split by the weights it attributed and signed."""
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
        """Wei credited to `account` (payouts, refunds, fees) and not yet withdrawn."""
        return int(self._call("balances", to_checksum_address(account)))

    def withdraw(self, account: LocalAccount) -> int:
        """Send everything credited to `account` to it; returns the amount."""
        receipt = self._send(account, "withdraw")
        return int(self._event(receipt, "Withdrawal").args["amount"])

    def liabilities(self) -> int:
        """Open escrow plus credited balances; always equals the contract's ether."""
        return int(self._call("liabilities"))

    def ether_balance(self) -> int:
        return int(self.chain.w3.eth.get_balance(self.address))


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
