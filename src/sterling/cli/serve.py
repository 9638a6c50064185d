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
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a --host other than loopback. The API signs with the chain's dev accounts "
            "and has no login: expose it only on a network you trust.",
        ),
    ] = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """Serve the web app: the JSON API under /api (schema at /openapi.json) and the pages at /.

    It works on the chain and Marketplace the other commands use (--rpc-url or $STERLING_RPC_URL,
    and the deployment recorded in --state, as `sterling chain up` writes it), signs with the
    local chain's dev accounts, and stores sealed data in --store, where the enclave worker
    (`sterling enclave run`, with the same --state and --store) reads it. Start a chain first:
    `sterling chain up` prints its rpc_url. With --format json, prints one line with the URL once
    the server answers. Stop with Ctrl-C.
    """
    import socket

    import uvicorn

    from sterling.web.app import create_app
    from sterling.web.context import WebContext

    if not _loopback(host) and not allow_remote:
        raise UsageError(
            f"--host {host} is not a loopback address: the API signs with dev accounts and has no login; "
            "pass --allow-remote to listen there anyway"
        )
    settings = Settings.from_env()
    context = WebContext.connect(
        settings,
        rpc_url=rpc_url,
        marketplace=marketplace,
        state=state,
        store=store,
        max_upload_mb=max_upload_mb,
    )
    app = create_app(context)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}"
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        info = {
            "url": url,
            "chain_id": context.market.chain.chain_id,
            "marketplace": context.market.address,
            "rpc_url": context.market.chain.rpc_url,
        }
        if fmt is Format.json:
            emit_json(info)
        else:
            console.print(f"Sterling web app at [bold]{url}[/] (chain {info['chain_id']}); Ctrl-C stops it")

    async def main() -> None:
        task = asyncio.create_task(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            task.cancel()

    # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal it caught: exit 0 after it
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
