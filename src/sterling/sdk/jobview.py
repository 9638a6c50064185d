"""A job as its page shows it: state, progress history, allocations and payouts, events, the result.

Everything comes from the chain's record and events, as `sterling job status` and `job watch`
read them; the result (metrics, appraisal, the model's shape) only when the caller holds the
consumer's key and the model decrypts (`sdk.consumer.fetch_result`, hash checked).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO_ADDRESS, Event, Job, JobState
from sterling.chain.units import from_micro
from sterling.crypto import seal
from sterling.sdk.consumer import FINAL_STATES, fetch_result
from sterling.sdk.explorer import event_json


def _state(job: Job, progress: list[Event]) -> str:
    if job.state is JobState.CLAIMED and progress:
        return "training"
    return job.state.label


def _last(progress: list[Event]) -> tuple[int, int, float]:
    if not progress:
        return 0, 0, 0.0
    args = progress[-1].args
    return int(args["step"]), int(args["steps"]), from_micro(int(args["micro_epsilon"]))


def job_summaries(market: Marketplace) -> list[dict[str, Any]]:
    """Every job, newest first, with its latest heartbeat (one scan of the events for all of them)."""
    beats: dict[int, list[Event]] = defaultdict(list)
    for ev in market.events():
        if ev.name == "JobProgress":
            beats[int(ev.args["job_id"])].append(ev)
    out = []
    for job in market.jobs():
        step, steps, eps = _last(beats[job.id])
        out.append(
            {
                "id": job.id,
                "consumer": job.consumer,
                "state": _state(job, beats[job.id]),
                "escrow_wei": str(job.escrow),
                "listing_ids": job.listing_ids,
                "step": step,
                "steps": steps,
                "epsilon_spent": eps,
            }
        )
    return list(reversed(out))


def job_detail(
    market: Marketplace, job_id: int, *, consumer_key: X25519PrivateKey | None = None
) -> dict[str, Any]:
    """The job page's document; NotFound for an unknown id."""
    job = market.job(job_id)
    evs = market.job_events(job_id)
    progress = [ev for ev in evs if ev.name == "JobProgress"]
    step, steps, eps = _last(progress)
    timestamps: dict[int, int] = {}

    def stamp(block: int) -> int:
        if block not in timestamps:
            timestamps[block] = int(market.chain.w3.eth.get_block(block)["timestamp"])
        return timestamps[block]

    reason = next((str(ev.args["reason"]) for ev in evs if ev.name == "JobFailed"), None)
    return {
        "id": job.id,
        "consumer": job.consumer,
        "state": _state(job, progress),
        "escrow_wei": str(job.escrow),
        "enclave": None if job.enclave == ZERO_ADDRESS else job.enclave,
        "lease_deadline": job.lease_deadline or None,
        "reason": reason,
        "progress": {
            "step": step,
            "steps": steps,
            "epsilon_spent": eps,
            "history": [
                {
                    "step": int(ev.args["step"]),
                    "epsilon_spent": from_micro(int(ev.args["micro_epsilon"])),
                    "block": ev.block,
                    "timestamp": stamp(ev.block),
                }
                for ev in progress
            ],
        },
        "allocations": [
            {
                "listing_id": a.listing_id,
                "epsilon_reserved": from_micro(a.reserved),
                "epsilon_spent": from_micro(a.spent),
                "price_wei": str(a.price),
                "payout_wei": str(a.payout),
                "weight": a.weight,
            }
            for a in job.allocations
        ],
        "refund_wei": _refund(job, evs),
        "events": [event_json(ev) for ev in evs],
        "result": result(market, job, consumer_key) if consumer_key is not None else None,
    }


def _refund(job: Job, evs: list[Event]) -> str | None:
    if job.state is JobState.COMPLETED:
        done = next((ev for ev in evs if ev.name == "JobCompleted"), None)
        return str(int(done.args["refunded"])) if done else None
    if job.state in FINAL_STATES:
        submitted = next((ev for ev in evs if ev.name == "JobSubmitted"), None)
        return str(int(submitted.args["escrow"])) if submitted else str(job.escrow)
    return None


def result(market: Marketplace, job: Job, consumer_key: X25519PrivateKey) -> dict[str, Any] | None:
    """Metrics, appraisal and the model's shape of a completed job, if `consumer_key` opens it."""
    if job.state is not JobState.COMPLETED or job.consumer_key != seal.public_bytes(consumer_key):
        return None
    bundle = fetch_result(market, job.id, consumer_key)
    info = bundle.info
    appraisal = info.get("appraisal") or {}
    picked = info.get("checkpoint") or {}
    # Only a job that chose its epoch on the consumer's own validation set has a curve (no ε).
    checkpoint = (
        {
            "rule": str(picked.get("rule")),
            "selected_step": int(picked.get("selected_step") or 0),
            "curve": [{k: float(v) for k, v in point.items()} for point in picked.get("curve") or []],
        }
        if picked.get("curve")
        else None
    )
    return {
        # A job whose contract kept no provider completes without a model; its appraisal is here.
        "model_released": bundle.has_model,
        "reason": info.get("reason"),
        "receipt_sha256": info.get("receipt_sha256"),
        "neighbours": info.get("neighbours"),
        "metrics": dict(info.get("metrics") or {}),
        "metrics_private": bool(info.get("metrics_private", False)),
        "epsilon_spent": info.get("epsilon_spent"),
        "steps": info.get("steps"),
        "appraisal": {
            "method": appraisal.get("method"),
            "values": appraisal.get("values"),
            "flagged": list(appraisal.get("flagged") or []),
            "kept": list(appraisal.get("kept") or []),
        },
        "checkpoint": checkpoint,
        "model": {
            "family": bundle.graph.family,
            "params": int(sum(int(v.size) for v in bundle.state.values())),
            "classes": list(bundle.classes),
            "in_shape": list(bundle.in_shape),
        },
    }
