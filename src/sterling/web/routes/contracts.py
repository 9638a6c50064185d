"""The consumer's contract: their own validation set, assemble a job from listings, and verify a
job's text as it is typed."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from sterling.sdk.assemble import assemble_job, load_validation
from sterling.sdk.editor import check_text, from_report
from sterling.web.context import WebContext
from sterling.web.errors import ApiError
from sterling.web.routes.deps import Account, Body, ctx
from sterling.web.routes.provider import form_text, multipart_form

router = APIRouter(tags=["contracts"])
Ctx = Annotated[WebContext, Depends(ctx)]
MAX_JOB_TEXT = 256 * 1024


class AssembleBody(Body):
    listing_ids: list[Annotated[int, Field(strict=True)]] = Field(min_length=1, max_length=32)
    family: Literal["logistic_regression", "mlp", "cnn"]
    account: Account
    validation_uri: str | None = Field(default=None, max_length=256)


class VerifyBody(Body):
    text: str = Field(max_length=MAX_JOB_TEXT)
    account: Account


@router.post("/assemble")
def assemble(c: Ctx, req: AssembleBody) -> dict[str, Any]:
    """A job satisfying every chosen listing: one ε within every cap and budget, σ calibrated to it,
    the payment cap the sum of the prices quoted to `account`. With `validation_uri` (from
    POST /api/validation) the job evaluates on that set, keeps its best epoch, and asks for
    each provider's appraisal value at a small ε within the same per-listing ε."""
    account = c.account(req.account)
    validation = load_validation(c.store, req.validation_uri) if req.validation_uri else None
    done = assemble_job(
        c.market, req.listing_ids, family=req.family, consumer=account.address, validation=validation
    )
    doc = done.job_json()
    text = json.dumps(doc, indent=2)
    return {"job": doc, "text": text, "report": from_report(done.job, done.report, text).to_json()}


@router.post("/verify")
def verify(c: Ctx, req: VerifyBody) -> dict[str, Any]:
    """The verifier's report on a job's text (200 for any text): parse error, violations by line, summary."""
    account = c.account(req.account)
    return check_text(c.market, req.text, consumer=account.address).to_json()


#: Form fields POST /api/validation reads.
VALIDATION_FIELDS = ("file", "listing_ids", "label_column")


@router.post("/validation", status_code=201)
async def validation(c: Ctx, request: Request) -> dict[str, Any]:
    """Store the consumer's own labelled validation set for a job over `listing_ids`.

    multipart/form-data: file (.npz, .csv, .parquet, or a .zip of class folders of images, as
    publish takes), listing_ids (comma-separated), label_column (CSV/Parquet, default "label").
    The set must hold the listings' shape and every class of theirs; it is stored as is (it is the
    consumer's data) and its URI goes into the job's `evaluation.validation_uri`.
    """
    form = await multipart_form(request, c.max_upload_bytes, what="validation")
    try:
        return await run_in_threadpool(_validation, c, form)
    finally:
        await form.close()


def _validation(c: WebContext, form: FormData) -> dict[str, Any]:
    from sterling.sdk.consumer import listing_views
    from sterling.sdk.upload import FieldError, store_validation_upload

    unknown = sorted(set(form.keys()) - set(VALIDATION_FIELDS))
    if unknown:
        raise ApiError(
            400,
            f"unknown form field {unknown[0]}; validation takes {', '.join(VALIDATION_FIELDS)}",
            field=unknown[0],
        )
    parts = [p.strip() for p in (form_text(form, "listing_ids") or "").split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ApiError(
            400, "listing_ids must be listing ids separated by commas, e.g. 1,2", field="listing_ids"
        )
    ids = sorted({int(p) for p in parts})
    views = listing_views(c.market, ids)
    missing = [lid for lid in ids if lid not in views]
    if missing:
        raise ApiError(400, f"no listing {', '.join(map(str, missing))}", field="listing_ids")
    file = form.get("file")
    if not isinstance(file, UploadFile) or not file.filename:
        raise ApiError(400, "file must be an uploaded dataset file", field="file")
    with tempfile.TemporaryDirectory(prefix="sterling-validation-") as tmp:
        path = Path(tmp) / "validation"
        with open(path, "wb") as out:
            shutil.copyfileobj(file.file, out)
        try:
            uri, dataset = store_validation_upload(
                c.store,
                path,
                filename=file.filename,
                listings={lid: views[lid].schema for lid in ids},
                label_column=form_text(form, "label_column") or "label",
                max_bytes=c.max_upload_bytes * 8,
            )
        except FieldError as exc:
            raise ApiError(400, str(exc), field=exc.field) from None
    counts = [int((dataset.labels == i).sum()) for i in range(len(dataset.schema.classes))]
    return {
        "validation_uri": uri,
        "rows": dataset.schema.rows,
        "classes": list(dataset.schema.classes),
        "class_counts": counts,
        "listing_ids": ids,
    }
