"""The provider's page: check a provider contract, and publish a dataset from one upload.

Publishing validates everything (terms, families, the contract, the whole dataset import)
before any blob is written, and the listing is created by one transaction or not at all. The
upload is counted while it is read and refused with 413 past the server's limit, so an
oversize body is never buffered whole.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from sterling.errors import EnclaveError, NotFound, UsageError
from sterling.web.context import WebContext
from sterling.web.errors import ApiError, UploadTooLarge
from sterling.web.routes.deps import Account, AccountBody, Body, Wei, ctx

router = APIRouter(tags=["provider"])
Ctx = Annotated[WebContext, Depends(ctx)]

#: Form fields publish reads; any other is refused so a typo is not silently ignored.
FIELDS = (
    "file", "name", "description", "price_per_job_wei", "price_per_epsilon_wei", "epsilon_budget",
    "max_epsilon_per_job", "delta", "allowed_families", "contract", "publish_preview",
    "publish_class_counts", "label_column", "account",
)  # fmt: skip
REQUIRED = (
    "file",
    "price_per_job_wei",
    "price_per_epsilon_wei",
    "epsilon_budget",
    "max_epsilon_per_job",
    "delta",
)


class ContractBody(Body):
    source: str = Field(max_length=256 * 1024)


@router.post("/provider/check-contract")
def check_contract(req: ContractBody) -> dict[str, Any]:
    """The sandbox's verdict on a provider contract's source; nothing is stored."""
    from sterling.sdk.contracts import contract_problems

    problems = contract_problems(req.source)
    return {"ok": not problems, "problems": problems}


async def multipart_form(request: Request, limit: int, *, what: str = "publish") -> FormData:
    """The request's multipart form, counted while read: 413 past `limit` bytes, 400 if malformed."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ApiError(400, f"{what} takes multipart/form-data, not {kind or 'an empty content type'}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(limit)

    async def counted() -> AsyncGenerator[bytes, None]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise UploadTooLarge(limit)
            yield chunk

    try:
        return await MultiPartParser(request.headers, counted(), max_files=1, max_fields=32).parse()
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body: {exc.message}", field=None) from None


def form_text(form: FormData, name: str, default: str | None = None, *, strip: bool = True) -> str | None:
    value = form.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a text field, not a file", field=name)
    return value.strip() if strip else value


def _wei(form: FormData, name: str) -> int:
    value = form_text(form, name) or ""
    if not value.isdigit():
        raise ApiError(400, f"{name} must be a whole number of wei ≥ 0, got {value!r}", field=name)
    return int(value)


def _float(form: FormData, name: str) -> float:
    value = form_text(form, name) or ""
    try:
        number = float(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, got {value!r}", field=name) from None
    if not math.isfinite(number):
        raise ApiError(400, f"{name} must be a finite number, got {value!r}", field=name)
    return number


def _bool(form: FormData, name: str) -> bool:
    value = (form_text(form, name, "false") or "false").lower()
    if value not in ("true", "false", "1", "0", "on", "off", ""):
        raise ApiError(400, f'{name} must be "true" or "false", got {value!r}', field=name)
    return value in ("true", "1", "on")


@router.post("/provider/publish", status_code=201)
async def publish(c: Ctx, request: Request) -> dict[str, Any]:
    """Import, encrypt, store and list an uploaded dataset with its terms, or refuse, storing nothing.

    multipart/form-data: file (.npz, .csv, .parquet, or a .zip of class folders of images), name,
    price_per_job_wei, price_per_epsilon_wei, epsilon_budget, max_epsilon_per_job, delta,
    allowed_families (comma-separated), contract (source), publish_preview, account.
    """
    form = await multipart_form(request, c.max_upload_bytes)
    try:
        return await run_in_threadpool(_publish, c, form)
    finally:
        await form.close()


def _publish(c: WebContext, form: FormData) -> dict[str, Any]:
    from sterling.sdk.provider import ListingTerms
    from sterling.sdk.upload import Upload, publish_upload

    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise ApiError(
            400, f"unknown form field {unknown[0]}; publish takes {', '.join(FIELDS)}", field=unknown[0]
        )
    for name in REQUIRED:
        if form.get(name) in (None, ""):
            raise ApiError(400, f"the form has no {name}", field=name)
    account_text = form_text(form, "account", "") or ""
    if not account_text.isdigit():
        raise ApiError(400, f"account must be a dev account index, got {account_text!r}", field="account")
    try:
        provider = c.account(int(account_text))
    except UsageError as exc:
        raise ApiError(400, str(exc), field="account") from None
    terms = ListingTerms(
        price_per_job_wei=_wei(form, "price_per_job_wei"),
        price_per_epsilon_wei=_wei(form, "price_per_epsilon_wei"),
        epsilon_budget=_float(form, "epsilon_budget"),
        max_epsilon_per_job=_float(form, "max_epsilon_per_job"),
        delta=_float(form, "delta"),
    )
    contract = form_text(form, "contract", strip=False)
    file = form.get("file")
    if not isinstance(file, UploadFile) or not file.filename:
        raise ApiError(400, "file must be an uploaded dataset file", field="file")
    with tempfile.TemporaryDirectory(prefix="sterling-publish-") as tmp:
        path = Path(tmp) / "dataset"
        with open(path, "wb") as out:
            shutil.copyfileobj(file.file, out)
        upload = Upload(
            path=path,
            filename=file.filename,
            terms=terms,
            name=form_text(form, "name") or "",
            description=form_text(form, "description") or "",
            allowed_families=tuple(
                f.strip() for f in (form_text(form, "allowed_families") or "").split(",") if f.strip()
            ),
            contract=contract if contract and contract.strip() else None,
            publish_preview=_bool(form, "publish_preview"),
            publish_class_counts=_bool(form, "publish_class_counts"),
            label_column=form_text(form, "label_column") or "label",
        )
        try:
            done, dataset = publish_upload(
                c.market,
                provider,
                c.store,
                upload,
                trust=c.client_trust(),
                max_bytes=c.max_upload_bytes * 8,
                lock=c.write_lock,
            )
        except (NotFound, EnclaveError) as exc:  # no live, trusted enclave to seal the data key to
            raise ApiError(409, str(exc)) from None
    return {
        "listing_id": done.listing_id,
        "data_hash": "0x" + done.data_hash.hex(),
        "manifest_uri": done.data_uri,
        "rows": dataset.schema.rows,
        "modality": dataset.schema.modality,
    }


# ------------------------------------------------- a provider's listings and earnings


@router.get("/provider/listings")
def my_listings(c: Ctx, account: int) -> dict[str, Any]:
    """Every listing dev account `account` published (on sale or not), with what each has earned."""
    from sterling.sdk.manage import provider_listings
    from sterling.web.routes.account import dev_account

    signer = dev_account(c, account)
    return {
        "account": account,
        "address": signer.address,
        "listings": provider_listings(c.market, signer.address),
    }


class DeriveBody(Body):
    """New terms for a derived listing; a term left out is the parent's. `policy` or
    `pinned_measurement` null (or "") drops it; `contract` "keep" runs the parent's provider contract,
    "none" none."""

    account: Account
    price_per_job_wei: Wei | None = None
    price_per_epsilon_wei: Wei | None = None
    max_epsilon_per_job: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    policy: str | None = None
    pinned_measurement: str | None = None
    price_per_prediction_wei: Wei | None = None
    contract: Literal["keep", "none"] = "keep"


def _given(req: DeriveBody, name: str) -> Any:
    """A term's new value: KEEP when the request leaves it out, None when it clears it."""
    from sterling.sdk.manage import KEEP

    if name not in req.model_fields_set:
        return KEEP
    value = getattr(req, name)
    return value.strip() or None if isinstance(value, str) else value


@router.post("/provider/listings/{listing_id}/derive", status_code=201)
def derive(c: Ctx, listing_id: int, req: DeriveBody) -> dict[str, Any]:
    """Re-list a listing's data under new terms, on the same privacy budget (its provider only).

    400 naming the field for a bad term or a listing that is not the account's, 404 for an unknown
    listing; the new listing as the marketplace shows it."""
    from sterling.sdk import manage
    from sterling.sdk.listings import summary
    from sterling.web.routes.account import dev_account

    signer = dev_account(c, req.account)
    parent = manage.owned(c.market, signer, listing_id)
    terms = manage.derived_terms(
        parent,
        price_per_job_wei=req.price_per_job_wei,
        price_per_epsilon_wei=req.price_per_epsilon_wei,
        max_epsilon_per_job=req.max_epsilon_per_job,
        policy=_given(req, "policy"),
        pinned_measurement=_given(req, "pinned_measurement"),
        price_per_prediction_wei=req.price_per_prediction_wei,
    )
    contract_hash = manage.contract_hash_for(parent, drop_contract=req.contract == "none")
    child = manage.derive(
        c.market, signer, listing_id, terms=terms, contract_hash=contract_hash, lock=c.write_lock
    )
    return {"listing_id": child.id, "parent": listing_id, "listing": summary(c.market, child.id).to_json()}


@router.post("/provider/listings/{listing_id}/withdraw")
def withdraw_listing(c: Ctx, listing_id: int, req: AccountBody) -> dict[str, Any]:
    """Take a listing off sale (its provider only): 400 if it is another's, 404 unknown, 409 if it
    already is; jobs already submitted on it are unaffected."""
    from sterling.sdk import manage
    from sterling.web.routes.account import dev_account

    signer = dev_account(c, req.account)
    try:
        after = manage.withdraw_listing(c.market, signer, listing_id, lock=c.write_lock)
    except manage.AlreadyWithdrawn as exc:
        raise ApiError(409, str(exc)) from None
    return {"listing_id": after.id, "active": after.active, "open": after.open}
