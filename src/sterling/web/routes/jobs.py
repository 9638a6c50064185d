"""Jobs: submit one, list them, a job's page, its live progress (server-sent events), cancel."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from sterling.chain.types import JobState
from sterling.errors import EnclaveError, NotFound, UsageError
from sterling.index import EventQuery, JobQuery, JobRow
from sterling.sdk import consumer, jobview
from sterling.sdk.editor import check_text, from_report
from sterling.web.context import WebContext
from sterling.web.errors import ApiError
from sterling.web.routes.contracts import MAX_JOB_TEXT
from sterling.web.routes.deps import Account, AccountBody, Body, Paged, ctx

router = APIRouter(tags=["jobs"])
Ctx = Annotated[WebContext, Depends(ctx)]


class SubmitBody(Body):
    text: str = Field(max_length=MAX_JOB_TEXT)
    account: Account


def _refused(message: str, report: dict[str, Any]) -> ApiError:
    return ApiError(400, message, field=None, report=report)


@router.post("/jobs", status_code=201)
def submit(c: Ctx, req: SubmitBody) -> dict[str, Any]:
    """Verify, seal, store, escrow and submit a job signed by dev account `account`; nothing is
    spent when the verifier or a provider's contract refuses (400 with the report)."""
    account = c.account(req.account)
    checked = check_text(c.market, req.text, consumer=account.address)
    if checked.job is None or not checked.ok or checked.plan is None:
        if checked.parse_error is not None:
            pe = checked.parse_error
            message = f"the job is not valid JSON: line {pe['line']}, column {pe['column']}: {pe['message']}"
        else:
            message = f"the job violates {len(checked.violations)} term(s): " + "; ".join(
                str(v["message"]) for v in checked.violations
            )
        raise _refused(message, checked.to_json())
    job = checked.job
    refusals = consumer.precheck_contracts(c.market, job, consumer=account.address, plan=checked.plan)
    if refusals:
        report = checked.to_json()
        report["ok"] = False
        report["violations"] = [
            {
                "term": "provider_contract",
                "message": f"listing {lid}: {why}",
                "listing_id": lid,
                "asked": None,
                "allowed": None,
                "field": None,
                "line": None,
            }
            for lid, why in refusals.items()
        ]
        raise _refused(
            "providers' contracts would refuse this job: "
            + "; ".join(f"listing {lid}: {why}" for lid, why in refusals.items()),
            report,
        )
    with c.write_lock:
        try:
            done = consumer.submit_job(
                c.market,
                account,
                c.consumer_key(account),
                job,
                c.store,
                trust=c.client_trust(),
                index=c.indexed(),
            )
        except consumer.JobRejected as exc:  # the chain moved between the check and the lock
            raise _refused(str(exc), from_report(job, exc.report, req.text).to_json()) from None
        except (NotFound, EnclaveError) as exc:  # no live, trusted enclave to seal the job to
            raise ApiError(409, str(exc)) from None
    out = done.to_json()
    return {
        "job_id": out["job_id"],
        "job_hash": out["job_hash"],
        "escrow_wei": str(done.escrow_wei),
        "epsilon_per_listing": out["epsilon_per_listing"],
        "price_per_listing_wei": {k: str(v) for k, v in (out["price_per_listing_wei"] or {}).items()},
    }


@router.get("/jobs")
def all_jobs(c: Ctx, paged: Paged) -> dict[str, Any]:
    """A page of jobs, newest first, each with its latest training step and ε spent."""
    return c.indexed().jobs(JobQuery(page=paged.page, per_page=paged.per_page)).map(JobRow.to_json)


@router.get("/jobs/{job_id}/events")
def job_events(c: Ctx, job_id: int, paged: Paged) -> dict[str, Any]:
    """A page of one job's events, newest first; 404 for an unknown job."""
    c.market.job(job_id)  # NotFound -> 404
    return (
        c.indexed()
        .events(EventQuery(job_id=job_id, page=paged.page, per_page=paged.per_page))
        .map(lambda e: e)
    )


@router.get("/jobs/{job_id}")
def one_job(c: Ctx, job_id: int) -> dict[str, Any]:
    """A job's page: state, progress history, allocations and payouts, events, and (for a dev
    account's completed job) its metrics, appraisal and model."""
    detail = jobview.job_detail(c.market, job_id)
    owner = c.dev_account_for(detail["consumer"])
    if owner is not None and detail["state"] == "completed":
        if job_id not in c.results:
            c.results[job_id] = jobview.result(c.market, c.market.job(job_id), c.consumer_key(owner))
        detail["result"] = c.results[job_id]
    return detail


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@router.get("/jobs/{job_id}/stream", response_model=None)
async def stream(c: Ctx, job_id: int, request: Request) -> StreamingResponse | JSONResponse:
    """Server-sent events: `progress` whenever the job changes, `done` at a final state (then the end)."""
    first = await run_in_threadpool(consumer.progress, c.market, job_id)  # NotFound → 404 before streaming

    async def events() -> AsyncIterator[str]:
        last: consumer.Progress | None = None
        now = first
        quiet_since = time.monotonic()
        while True:
            if now != last:
                yield _sse("done" if now.final else "progress", now.to_json())
                last, quiet_since = now, time.monotonic()
            if now.final:
                return
            if time.monotonic() - quiet_since >= c.keepalive_seconds:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(c.poll_seconds)
            if await request.is_disconnected():
                return
            now = await run_in_threadpool(consumer.progress, c.market, job_id)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/jobs/{job_id}/cancel")
def cancel(c: Ctx, job_id: int, req: AccountBody) -> dict[str, Any]:
    """Cancel a pending job (its consumer only): the whole escrow is refunded to their balance."""
    account = c.account(req.account)
    job = c.market.job(job_id)
    if job.consumer != account.address:
        raise UsageError(
            f"job {job_id} belongs to {job.consumer}, not to account {req.account} ({account.address})"
        )
    expired = job.state is JobState.CLAIMED and job.lease_deadline < c.market.chain.next_block_time()
    if job.state is not JobState.PENDING and not expired:
        raise ApiError(
            409, f"job {job_id} is {job.state.label}: only a pending job can be cancelled", field=None
        )
    with c.write_lock:
        c.market.cancel_job(account, job_id)
    return {"job_id": job_id, "state": c.market.job(job_id).state.label, "refund_wei": str(job.escrow)}
