"""Only the local user drives `sterling serve`: the Host it answers to, Origin, a per-launch token.

The API signs with the chain's dev accounts, so a web page in the same browser must not be able
to drive it. `Guard` is a pure ASGI middleware in front of every route (routes added later are
covered without a word of theirs); it checks, in this order:

1. Host (400): the Host header must be a loopback name (127.0.0.1, localhost, [::1]) or a name
   given with `--allow-remote`, with the served port. A DNS-rebinding page reaches the server
   under its own name (`evil.example:8000`) and is refused here.
2. Origin (403), on every state-changing method (POST, PUT, PATCH, DELETE): the Origin, or
   lacking it the Referer, must be this server's own (`http://<the Host header>`). Browsers send
   Origin on every cross-origin POST, forms included, so a request with neither header is not a
   page of another site: it is refused only if `Sec-Fetch-Site` says it is cross-site or
   same-site, and otherwise (curl, scripts) passes on to the token check.
3. Token (401): everything but the static assets needs the launch's token, from the
   HttpOnly, SameSite=Strict cookie that the first page load with `?token=` sets (then redirected
   to the same page without it), or an `Authorization: token <token>` header. A page may take
   `?token=`; the JSON API takes only the cookie or the header.

Responses also forbid being framed (clickjacking from a page on another port of the same host).
"""

from __future__ import annotations

import hmac
import html
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import cookie_parser
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from sterling.errors import UsageError
from sterling.web.errors import body

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC = ("/static/",)
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")
_NAME = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?")
_FRAMING = [(b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'")]


def new_token() -> str:
    """A fresh launch token: 256 bits from `secrets`, URL- and cookie-safe."""
    return secrets.token_urlsafe(32)


def checked_token(token: str) -> str:
    """`token` if it is fit to be one (16 to 256 URL-safe characters), else UsageError."""
    if not _TOKEN.fullmatch(token):
        raise UsageError(
            "--token must be 16 to 256 characters from A-Z a-z 0-9 . _ ~ - (it goes in a URL and a cookie)"
        )
    return token


def host_name(text: str) -> str:
    """A name clients type in the URL (`sterling.lan`, `192.168.1.5`, `[fe80::1]`, `name:443`), lowercased."""
    name = text.strip().lower()
    if name.count(":") > 1 and not name.startswith("["):
        name = f"[{name}]"  # a bare IPv6 address
    match = _NAME.fullmatch(name)
    if not match or (match.group(3) and not 0 < int(match.group(3)[1:]) < 65536):
        raise UsageError(
            f"--allow-remote takes a host name as clients type it in the URL (sterling.lan, 192.168.1.5, "
            f"[fe80::1] or sterling.lan:443), got {text!r}"
        )
    return name


def split_host(host: str) -> tuple[str, int | None]:
    """`name:port` as (name, port); (host, None) without a port. IPv6 names keep their brackets."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name, int(port)
    return host, None


@dataclass(frozen=True)
class GuardSettings:
    """What the guard admits: `token`, the served `port` (None: any) and names beyond loopback."""

    token: str
    port: int | None = None
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def build(
        cls, *, token: str | None = None, port: int | None = None, allowed_hosts: Sequence[str] = ()
    ) -> GuardSettings:
        return cls(
            token=new_token() if token is None else checked_token(token),
            port=port,
            allowed_hosts=tuple(host_name(h) for h in allowed_hosts),
        )

    @property
    def cookie(self) -> str:
        """The cookie's name: per port, since cookies are not (two servers on one host keep theirs)."""
        return "sterling_token" if self.port is None else f"sterling_token_{self.port}"

    def _names(self) -> list[tuple[str, int | None]]:
        return [(n, self.port) for n in LOOPBACK] + [
            (name, self.port if port is None else port) for name, port in map(split_host, self.allowed_hosts)
        ]

    def admits(self, host: str, scheme: str = "http") -> bool:
        name, port = split_host(host.lower())
        given = port if port is not None else (443 if scheme in ("https", "wss") else 80)
        return any(name == n and (p is None or given == p) for n, p in self._names())

    def described(self) -> str:
        return ", ".join(n if p is None else f"{n}:{p}" for n, p in self._names())

    def accepts(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.token.encode())


class Guard:
    """The ASGI middleware: Host, then Origin on state-changing methods, then the token."""

    def __init__(self, app: ASGIApp, *, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            if scope["type"] == "websocket":
                await WebSocketClose(code=1008, reason="refused by the server's guard")(scope, receive, send)
            else:
                await refusal(scope, receive, send)
            return

        async def framing_denied(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *_FRAMING]}
            await send(message)

        await self.app(scope, receive, framing_denied)

    def refusal(self, scope: Scope) -> Response | None:
        """The response that refuses this request, or None to let it through."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope.get("headers") or ())}
        host = headers.get("host", "")
        if not host:
            return _json(400, "the request has no Host header; this server answers only to its own names")
        if not self.settings.admits(host, scope.get("scheme", "http")):
            first = split_host(host.lower())[0]
            return _json(
                400,
                f"this server does not answer to the host {host!r} "
                f"(it answers to {self.settings.described()}): to serve under another name, "
                f"start `sterling serve` with --allow-remote {first}",
            )
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        own = f"{scheme}://{host}"
        if method in STATE_CHANGING or method == "WEBSOCKET":
            cross = _cross_origin(headers, host)
            if cross is not None:
                return _json(
                    403,
                    f"refused: this {method} comes from {cross}, not from this server's own pages ({own}); "
                    "the API acts only on requests from the Sterling app it serves",
                )
        return self._token_refusal(scope, headers, own)

    def _token_refusal(self, scope: Scope, headers: dict[str, str], own: str) -> Response | None:
        path: str = scope.get("path", "/")
        if path.startswith(PUBLIC):
            return None
        s = self.settings
        scheme, _, value = headers.get("authorization", "").partition(" ")
        presented = [value.strip()] if scheme.lower() == "token" and value.strip() else []
        cookie = cookie_parser(headers.get("cookie", "")).get(s.cookie)
        if cookie:
            presented.append(cookie)
        api = path == "/api" or path.startswith("/api/") or path == "/openapi.json"
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and not api and scope.get("method") in ("GET", "HEAD") and s.accepts(given[-1]):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            back = RedirectResponse(path + (f"?{rest}" if rest else ""), status_code=303)
            back.set_cookie(s.cookie, s.token, httponly=True, samesite="strict", path="/")
            return back
        if any(s.accepts(p) for p in presented):
            return None
        wrong = bool(presented or given)
        message = (
            ("the access token is wrong (each launch of `sterling serve` draws a new one, "
             "unless given --token)" if wrong else "this server needs its access token")
            + f": open the URL `sterling serve` printed ({own}/?token=...) in this browser, "
            "or send the header `Authorization: token <token>`"
        )  # fmt: skip
        if not api and "text/html" in headers.get("accept", ""):
            return HTMLResponse(_PAGE.format(message=html.escape(message)), status_code=401)
        return _json(401, message)


def _cross_origin(headers: dict[str, str], host: str) -> str | None:
    """What names this request as another site's ("Origin http://evil.example", ...), or None."""
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is None:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return f"{name.title()} {value}"
        return None
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"another site (Sec-Fetch-Site: {site}, with no Origin)"
    return None


def _json(status: int, message: str) -> JSONResponse:
    return JSONResponse(body(message), status_code=status)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sterling: access token needed</title></head>
<body><h1>Sterling</h1><p>{message}.</p></body></html>
"""
