"""What routes share: the context, typed request fields, and wei amounts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from sterling.web.context import WebContext


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
