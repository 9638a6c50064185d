"""A dev account's money: its Marketplace balance (payouts, refunds, fees), its sources, withdrawing it.

The same functions as `sterling account balance|withdraw` (sterling.sdk.manage). Wei amounts are
decimal strings, as everywhere in the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from eth_account.signers.local import LocalAccount
from fastapi import APIRouter, Depends

from sterling.errors import UsageError
from sterling.sdk import manage
from sterling.web.context import WebContext
from sterling.web.errors import ApiError
from sterling.web.routes.deps import ctx

router = APIRouter(tags=["account"])
Ctx = Annotated[WebContext, Depends(ctx)]


def dev_account(c: WebContext, index: int) -> LocalAccount:
    """Dev account `index`, or 400 naming the field `account`."""
    try:
        return c.account(index)
    except UsageError as exc:
        raise ApiError(400, str(exc), field="account") from None


@router.get("/accounts/{account}/balance")
def balance(c: Ctx, account: int) -> dict[str, Any]:
    """Dev account `account`'s Marketplace balance and wallet ether, and the payouts (as a provider)
    and refunds (as a buyer) credited to it so far, job by job."""
    signer = dev_account(c, account)
    found = manage.balance(c.market, signer.address)
    return {
        "account": account,
        "address": found.address,
        "marketplace": found.marketplace,
        "balance_wei": str(found.balance_wei),
        "ether_wei": str(found.ether_wei),
        **manage.credits(c.market, signer.address),
    }


@router.post("/accounts/{account}/withdraw")
def withdraw(c: Ctx, account: int) -> dict[str, Any]:
    """Send everything credited to dev account `account` to its wallet; 409 when there is nothing."""
    signer = dev_account(c, account)
    try:
        done = manage.withdraw(c.market, signer, lock=c.write_lock)
    except manage.NothingToWithdraw as exc:
        raise ApiError(409, str(exc), field=None) from None
    return {
        "account": account,
        "address": done.address,
        "withdrawn_wei": str(done.amount_wei),
        "balance_wei": str(done.balance_wei),
        "ether_wei": str(done.ether_wei),
        "tx_hashes": list(done.tx_hashes),
    }
