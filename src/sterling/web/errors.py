"""Every error as `{"error": "<one line>", "field": <str|null>}` with a 4xx (or 502 for the chain).

Sterling's error tree maps to status codes here, once: bad input 400, unknown id 404, a chain
state that forbids it 409 (a revert), oversize upload 413, the node unreachable 502. FastAPI's
own request validation is answered with 400 in the same shape, naming the field. Never a traceback.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from requests.exceptions import RequestException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sterling.errors import (
    ChainError,
    ChainUnavailable,
    ContractError,
    ContractRevert,
    NotFound,
    SterlingError,
    UsageError,
)
from sterling.jsontext import MAX_DEPTH, too_deep


class ApiError(Exception):
    """An error a route raises on purpose, with its status, field and any extra body keys."""

    def __init__(self, status: int, message: str, *, field: str | None = None, **extra: Any) -> None:
        self.status = status
        self.message = message
        self.field = field
        self.extra = extra
        super().__init__(message)


class UploadTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the upload is larger than the server's limit of {limit >> 20} MiB", field="file"
        )


def body(message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": message, "field": field, **extra}


def status_of(exc: SterlingError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, ContractRevert):
        return 409
    if isinstance(exc, ChainUnavailable):
        return 502
    if isinstance(exc, UsageError | ContractError):
        return 400
    if isinstance(exc, ChainError):
        return 502
    return 500


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ShallowJson:
    """Answers 400 to a request body nested deeper than `MAX_DEPTH`, before FastAPI parses it.

    The standard JSON parser can crash the whole server on deep nesting (see sterling.jsontext;
    found by fuzzing). Multipart uploads pass untouched: they are streamed and counted.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = dict(scope.get("headers") or ()).get(b"content-type", b"")
        bodiless = scope.get("method") in ("GET", "HEAD", "OPTIONS")  # a GET may stream (events)
        if scope["type"] != "http" or bodiless or kind.startswith(b"multipart/"):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        data = b"".join(chunks)
        if too_deep(data) is not None:
            refusal = JSONResponse(
                body(f"the request body nests deeper than {MAX_DEPTH} levels"), status_code=400
            )
            await refusal(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        await self.app(scope, replay, send)


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the one body shape."""
    app.add_middleware(ShallowJson)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(_one_line(exc.message), exc.field, **exc.extra), status_code=exc.status)

    @app.exception_handler(SterlingError)
    async def sterling_error(_: Request, exc: SterlingError) -> JSONResponse:
        field = getattr(exc, "field", None)
        return JSONResponse(body(_one_line(str(exc)), field), status_code=status_of(exc))

    @app.exception_handler(RequestException)
    async def unreachable(_: Request, exc: RequestException) -> JSONResponse:
        return JSONResponse(body(f"the chain node cannot be reached ({type(exc).__name__})"), status_code=502)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
            field = None
        else:
            message = f"{field or 'the request body'}: {first.get('msg', 'invalid')}"
            if len(errors) > 1:
                message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return JSONResponse(body(message, field), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(body(message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            body(f"internal error ({type(exc).__name__}); see the server's log"), status_code=500
        )
