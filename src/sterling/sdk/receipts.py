"""Checking a job's privacy receipt against the chain, trusting neither the worker nor Sterling's figures.

A provider (or anyone) asks: was my data charged exactly what the job ran on
it? `check_receipt(market, job_id)` finds the receipt the settlement (or a
charged failure) committed on chain, checks its content against the hash on
chain, checks that it is this job's, on this chain and Marketplace, with the
job's δ and listings, and that each mechanism is one the plan allows, then
recomputes each listing's ε from the receipt alone (dp-accounting, PLD,
replace-one) and compares it with the micro-ε the chain charged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO32, JobState
from sterling.chain.units import from_delta
from sterling.errors import IntegrityError
from sterling.privacy.receipt import Receipt
from sterling.storage.blobs import fetch_verified


@dataclass(frozen=True)
class ReceiptCheck:
    job_id: int
    state: str
    charged: list[int]  # micro-ε per listing, from the chain
    receipt: Receipt | None = None
    receipt_uri: str | None = None
    recomputed: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "job_id": self.job_id,
            "state": self.state,
            "ok": self.ok,
            "problems": self.problems,
            "receipt_uri": self.receipt_uri,
            "receipt_sha256": None if r is None else "0x" + r.sha256().hex(),
            "outcome": None if r is None else r.outcome,
            "neighbours": None if r is None else r.plan.neighbours,
            "delta": None if r is None else r.plan.delta,
            "plan_sha256": None if r is None else "0x" + r.plan.sha256().hex(),
            "listings": [
                {
                    "listing_id": c.listing_id,
                    "mechanisms": [m.name for m in c.mechanisms],
                    "epsilon_recomputed": eps,
                    "micro_epsilon_receipt": c.micro_epsilon,
                    "micro_epsilon_charged": on_chain,
                }
                for c, eps, on_chain in zip(
                    r.charges if r else [], self.recomputed, self.charged, strict=False
                )
            ],
        }


def check_receipt(market: Marketplace, job_id: int) -> ReceiptCheck:
    """Fetch, verify and recompute the receipt of `job_id` (module docstring)."""
    job = market.job(job_id)
    charged = [a.spent for a in job.allocations]
    final = {ev.name: ev for ev in market.job_events(job_id) if ev.name in ("JobCompleted", "JobFailed")}
    event = final.get("JobCompleted") or final.get("JobFailed")
    if event is None or bytes(event.args["receipt_hash"]) == ZERO32:
        # No receipt: only right if nothing was charged (a job not settled, or refused before its data).
        problems = [] if not any(charged) else ["the chain charged ε without committing a receipt"]
        return ReceiptCheck(job_id, job.state.label, charged, problems=problems)
    uri, digest = str(event.args["receipt_uri"]), bytes(event.args["receipt_hash"])
    try:
        receipt = Receipt.from_bytes(fetch_verified(uri, digest))
    except IntegrityError as exc:
        raise IntegrityError(f"job {job_id}: its receipt does not match the hash on chain ({exc})") from None
    problems = _binding(market, job_id, receipt)
    problems += receipt.problems(charged)
    if job.state is JobState.COMPLETED and receipt.outcome == "failed":
        problems.append("a completed job's receipt says it failed")
    return ReceiptCheck(job_id, job.state.label, charged, receipt, uri, receipt.recompute(), problems)


def _binding(market: Marketplace, job_id: int, receipt: Receipt) -> list[str]:
    """Is this receipt about this job, chain and Marketplace, with the job's δ and listings?"""
    job = market.job(job_id)
    out = []
    if (receipt.chain_id, receipt.job_id) != (market.chain.chain_id, job_id):
        out.append(f"the receipt is for job {receipt.job_id} on chain {receipt.chain_id}")
    if receipt.marketplace.lower() != market.address.lower():
        out.append(f"the receipt is for Marketplace {receipt.marketplace}")
    if list(receipt.plan.listings) != job.listing_ids:
        out.append(
            f"the receipt's listings {list(receipt.plan.listings)} are not the job's {job.listing_ids}"
        )
    if abs(receipt.plan.delta - from_delta(job.delta)) > 1e-18:
        out.append(f"the receipt's δ {receipt.plan.delta:g} is not the job's {from_delta(job.delta):g}")
    return out
