"""What one job's handling ends in: a refusal before the data is touched, a charged failure after,
or what the worker reports of it (`Handled`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sterling.errors import EnclaveError
from sterling.privacy.receipt import Receipt


class JobRefused(EnclaveError):
    """The job may not run; the reason goes on chain with `fail_job` (and the consumer is refunded)."""


#: The reason on chain for a failure after training began: fixed, so that it says nothing of the data.
FAILED_AFTER_TRAINING = "failed after training began; charged the epsilon of what ran (see the receipt)"


class ChargedFailure(EnclaveError):
    """The job failed after mechanisms ran on its data: it is failed on chain with their charge.

    `reason` is what goes on chain: the fixed FAILED_AFTER_TRAINING unless the failure's cause is
    itself public (a revert of the chain's own), never the text of an exception raised on the data.
    """

    def __init__(self, detail: str, receipt: Receipt, *, reason: str = FAILED_AFTER_TRAINING) -> None:
        super().__init__(detail)
        self.receipt = receipt
        self.reason = reason


def settlement_refused(revert_reason: str) -> str:
    """The on-chain reason when the chain refuses a settlement while this worker holds the lease."""
    return f"the chain refused the settlement ({revert_reason[:120]}); charged the epsilon of what ran"


@dataclass
class Handled:
    job_id: int
    state: str  # completed, failed, skipped
    reason: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            **self.details,
        }
