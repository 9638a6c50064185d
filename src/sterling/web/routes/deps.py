"""What routes share: the context, typed request fields, wei amounts, and page bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from sterling.index import MAX_PER_PAGE
from sterling.web.context import WebContext
from sterling.web.errors import ApiError


def ctx(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def _wei(value: Any) -> int:
    """Wei as a JSON integer or a string of decimal digits (amounts pass 2^53)."""
    if isinstance(value, bool):
        raise ValueError("a wei amount is a whole number, not true/false")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a wei amount is ≥ 0")
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ValueError("a wei amount is a whole number ≥ 0, as an integer or a string of digits")


Wei = Annotated[int, BeforeValidator(_wei)]
Account = Annotated[int, Field(strict=True, ge=0, description="Index of a dev account of the local chain.")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountBody(Body):
    account: Account


@dataclass(frozen=True)
class Paging:
    page: int
    per_page: int


def paging(page: int = 1, per_page: int = 50) -> Paging:
    """`?page=&per_page=`: 422 naming the bound when the page is below 1 or the size above MAX_PER_PAGE."""
    if page < 1:
        raise ApiError(422, f"page must be at least 1, got {page}", field="page")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ApiError(
            422, f"per_page must be from 1 to {MAX_PER_PAGE} (MAX_PER_PAGE), got {per_page}", field="per_page"
        )
    return Paging(page, per_page)


Paged = Annotated[Paging, Depends(paging)]
