"""`sterling index status|sync|rebuild`: the market index every list is read from.

The index follows the Marketplace's events into a database: SQLite in Sterling's home by
default (`index-<chain id>-<marketplace>.sqlite`), or PostgreSQL with --index-url
(`postgresql+psycopg://user@127.0.0.1:5432/sterling`, or $STERLING_INDEX_URL). Reads sync it
first, so these commands are for operators: see where it stands, catch up, start again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sterling.cli.common import (
    ChainStateOpt,
    Format,
    FormatOpt,
    MarketplaceOpt,
    RpcUrlOpt,
    connect_market,
    console,
    emit_json,
)
from sterling.config import Settings

if TYPE_CHECKING:
    from sterling.index import MarketIndex

IndexUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--index-url",
        envvar="STERLING_INDEX_URL",
        help="The index database: a SQLAlchemy URL (sqlite:///path or postgresql+psycopg://...). "
        "Default: SQLite in $STERLING_HOME.",
    ),
]

app = typer.Typer(
    help="The market index: the chain's events in a database, read by every list.", no_args_is_help=True
)


def open_index(settings: Settings, url: str | None) -> MarketIndex:
    from sterling.index import MarketIndex

    return MarketIndex.open(url, home=settings.home)


def _show(doc: dict[str, Any], fmt: Format, title: str) -> None:
    if fmt is Format.json:
        emit_json(doc)
        return
    console.print(f"[bold]{title}[/]")
    for key, value in doc.items():
        console.print(f"  {key}: {value}", highlight=False)


def _run(
    action: str, rpc_url: str | None, marketplace: str | None, state: Any, index_url: str | None
) -> dict[str, Any]:
    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    if action == "status":
        from sterling.index import MarketIndex, default_url

        url = index_url or default_url(settings.home, market.chain.chain_id, market.address)
        index = MarketIndex.open(url)
    else:
        index = open_index(settings, index_url)
    try:
        if action == "status":
            return index.status()
        report = index.rebuild(market) if action == "rebuild" else index.sync(market)
        return {**report.to_json(), **index.status()}
    finally:
        index.close()


def _command(action: str, title: str, doc: str) -> Callable[..., None]:
    def command(
        rpc_url: RpcUrlOpt = None,
        marketplace: MarketplaceOpt = None,
        state: ChainStateOpt = None,
        index_url: IndexUrlOpt = None,
        fmt: FormatOpt = Format.text,
    ) -> None:
        _show(_run(action, rpc_url, marketplace, state, index_url), fmt, title)

    command.__doc__ = doc
    return command


app.command("status")(
    _command("status", "market index", "Where the index stands: database, deployment, last block, counts.")
)
app.command("sync")(
    _command(
        "sync", "synced", "Follow the chain to its head: events indexed, blocks, seconds, any reorg repaired."
    )
)
app.command("rebuild")(
    _command(
        "rebuild",
        "rebuilt",
        "Forget the index (not its manifest cache) and follow the chain again from the deployment block.",
    )
)
