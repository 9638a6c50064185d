"""Typed, immutable views of what the Marketplace stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from sterling.chain.units import MICRO, from_delta, from_micro

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ZERO32 = bytes(32)


class JobState(IntEnum):
    PENDING = 1
    CLAIMED = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Terms:
    """A listing's public terms. Prices in wei; epsilon in micro-epsilon.

    `price_per_prediction` is what each prediction from a model trained on the listing owes
    its provider (PredictionFees charges count × the sum over a job's listings).
    """

    price_per_job: int
    price_per_epsilon: int
    max_epsilon_per_job: int
    policy: str = ZERO_ADDRESS
    pinned_measurement: bytes = ZERO32
    price_per_prediction: int = 0

    def as_tuple(self) -> tuple[int, int, int, str, bytes, int]:
        return (
            self.price_per_job,
            self.price_per_epsilon,
            self.max_epsilon_per_job,
            self.policy,
            self.pinned_measurement,
            self.price_per_prediction,
        )

    def list_price(self, micro_epsilon: int) -> int:
        """The same formula as `Marketplace.list_price`."""
        return self.price_per_job + self.price_per_epsilon * micro_epsilon // MICRO

    def to_json(self) -> dict[str, Any]:
        return {
            "price_per_job_wei": self.price_per_job,
            "price_per_epsilon_wei": self.price_per_epsilon,
            "max_epsilon_per_job": from_micro(self.max_epsilon_per_job),
            "policy": None if self.policy == ZERO_ADDRESS else self.policy,
            "pinned_measurement": None
            if self.pinned_measurement == ZERO32
            else "0x" + self.pinned_measurement.hex(),
            "price_per_prediction_wei": self.price_per_prediction,
        }


@dataclass(frozen=True)
class Budget:
    owner: str
    total: int
    spent: int
    reserved: int
    delta: int

    @property
    def remaining(self) -> int:
        return self.total - self.spent - self.reserved

    def to_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "epsilon_total": from_micro(self.total),
            "epsilon_spent": from_micro(self.spent),
            "epsilon_reserved": from_micro(self.reserved),
            "epsilon_left": from_micro(self.remaining),
            "delta": from_delta(self.delta),
        }


@dataclass(frozen=True)
class Listing:
    id: int
    provider: str
    data_hash: bytes
    data_uri: str
    sealed_key: bytes
    contract_hash: bytes
    terms: Terms
    parent: int
    active: bool
    budget: Budget

    @property
    def open(self) -> bool:
        """Can serve a job: active, and some budget left after what is spent and reserved (as `is_open`)."""
        return self.active and self.budget.remaining > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "data_hash": "0x" + self.data_hash.hex(),
            "data_uri": self.data_uri,
            "contract_hash": None if self.contract_hash == ZERO32 else "0x" + self.contract_hash.hex(),
            "parent": self.parent or None,
            "active": self.active,
            "open": self.open,
            "terms": self.terms.to_json(),
            "budget": self.budget.to_json(),
        }


@dataclass(frozen=True)
class Enclave:
    address: str
    measurement: bytes
    hpke_public_key: bytes
    registered: bool


@dataclass(frozen=True)
class Allocation:
    listing_id: int
    reserved: int
    price: int
    spent: int
    payout: int
    weight: int


@dataclass(frozen=True)
class Job:
    id: int
    consumer: str
    state: JobState
    escrow: int
    delta: int
    consumer_key: bytes
    job_hash: bytes
    job_uri: str
    enclave: str
    lease_deadline: int
    result_hash: bytes
    model_uri: str
    sealed_model_key: bytes
    allocations: tuple[Allocation, ...] = field(default=())
    #: Unclaimed after this (chain time), anyone may expire the job: refund and release.
    pending_deadline: int = 0

    @property
    def listing_ids(self) -> list[int]:
        return [a.listing_id for a in self.allocations]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "consumer": self.consumer,
            "state": self.state.label,
            "escrow_wei": self.escrow,
            "delta": from_delta(self.delta),
            "job_hash": "0x" + self.job_hash.hex(),
            "job_uri": self.job_uri,
            "enclave": None if self.enclave == ZERO_ADDRESS else self.enclave,
            "lease_deadline": self.lease_deadline or None,
            "pending_deadline": self.pending_deadline or None,
            "result_hash": None if self.result_hash == ZERO32 else "0x" + self.result_hash.hex(),
            "model_uri": self.model_uri or None,
            "allocations": [
                {
                    "listing_id": a.listing_id,
                    "epsilon_reserved": from_micro(a.reserved),
                    "price_wei": a.price,
                    "epsilon_spent": from_micro(a.spent),
                    "payout_wei": a.payout,
                    "weight": a.weight,
                }
                for a in self.allocations
            ],
        }


@dataclass(frozen=True)
class Event:
    """A decoded Marketplace event, as the explorer reads them."""

    name: str
    args: dict[str, Any]
    block: int
    tx_hash: str
    log_index: int
    address: str
