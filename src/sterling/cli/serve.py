"""`sterling serve`: the web app (JSON API and pages) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from typing import Annotated

import typer

from sterling.cli.common import (
    ChainStateOpt,
    Format,
    FormatOpt,
    MarketplaceOpt,
    RpcUrlOpt,
    console,
    emit_json,
)
from sterling.cli.index import IndexUrlOpt
from sterling.config import Settings
from sterling.errors import UsageError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    rpc_url: RpcUrlOpt = None,
    state: ChainStateOpt = None,
    marketplace: MarketplaceOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on. Loopback only, unless --allow-remote.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 8000,
    max_upload_mb: Annotated[
        int,
        typer.Option("--max-upload-mb", min=1, help="Largest dataset upload accepted, in MiB (413 above)."),
    ] = 64,
    store: Annotated[
        str | None,
        typer.Option("--store", help="Blob store: a folder or fsspec URL. Default: $STERLING_HOME/blobs."),
    ] = None,
    allow_remote: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-remote",
            metavar="HOST",
            help="Also answer to this host name (repeatable; `name` or `name:port`), and allow a "
            "--host other than loopback. Anyone with the token can then sign with the chain's dev "
            "accounts: expose it only on a network you trust.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Use this access token instead of a fresh random one (for scripts; 16 or more URL-safe "
            "characters; it shows in the process list).",
        ),
    ] = None,
    index_url: IndexUrlOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Serve the web app: the JSON API under /api (schema at /openapi.json) and the pages at /.

    It works on the chain and Marketplace the other commands use (--rpc-url or $STERLING_RPC_URL,
    and the deployment recorded in --state, as `sterling chain up` writes it), signs with the
    local chain's dev accounts, and stores sealed data in --store, where the enclave worker
    (`sterling enclave run`, with the same --state and --store) reads it. Start a chain first:
    `sterling chain up` prints its rpc_url. With --format json, prints one line with the URL once
    the server answers. Stop with Ctrl-C.

    Only the local user drives it: each launch draws an access token and prints the URL that
    carries it (http://127.0.0.1:PORT/?token=...); opening that URL once sets a cookie in the
    browser, and scripts send `Authorization: token TOKEN` instead (--token picks the token).
    Requests under any host name but loopback and the --allow-remote names are refused, and so are
    state-changing requests from another site's pages (their Origin is not this server's).

    Lists are read from the market index (--index-url or $STERLING_INDEX_URL; default SQLite in
    $STERLING_HOME), which the server keeps in step with the chain.
    """
    import socket

    import uvicorn

    from sterling.web.app import create_app
    from sterling.web.context import WebContext
    from sterling.web.guard import checked_token, host_name, new_token, split_host

    remote = [host_name(h) for h in allow_remote or ()]
    if not _loopback(host) and not remote:
        raise UsageError(
            f"--host {host} is not a loopback address: the API signs with dev accounts; pass "
            "--allow-remote HOST (the name clients will use) to listen there anyway"
        )
    secret = new_token() if token is None else checked_token(token)
    settings = Settings.from_env()
    context = WebContext.connect(
        settings,
        rpc_url=rpc_url,
        marketplace=marketplace,
        state=state,
        store=store,
        max_upload_mb=max_upload_mb,
        index_url=index_url,
    )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    app = create_app(context, token=secret, port=bound, allowed_hosts=remote)
    shown = (f"[{host}]" if ":" in host else host) if _loopback(host) else remote[0]
    url = f"http://{shown}:{bound}" if split_host(shown)[1] is None else f"http://{shown}"
    login = f"{url}/?token={secret}"
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        info = {
            "url": url,
            "login_url": login,
            "token": secret,
            "chain_id": context.market.chain.chain_id,
            "marketplace": context.market.address,
            "rpc_url": context.market.chain.rpc_url,
        }
        if fmt is Format.json:
            emit_json(info)
        else:
            from rich.markup import escape

            console.print(
                f"Sterling web app at [bold]{escape(login)}[/] (chain {info['chain_id']}); open this URL "
                "(it carries the access token); Ctrl-C stops it",
                soft_wrap=True,
            )

    async def main() -> None:
        task = asyncio.create_task(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            task.cancel()

    # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal it caught: exit 0 after it
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
