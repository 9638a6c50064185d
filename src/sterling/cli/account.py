"""`sterling account`: the wei the Marketplace holds for you (payouts, refunds, fees), and withdrawing it.

Settlement credits balances and never sends ether (pull payments), so earnings and refunds stay on
the Marketplace until their owner withdraws them. Amounts are exact: whole wei, and ETH written out
from them without a float in between.
"""

from __future__ import annotations

from typing import Annotated

import typer

from sterling.cli.common import (
    ChainStateOpt,
    DevAccountOpt,
    Format,
    FormatOpt,
    IdentityOpt,
    MarketplaceOpt,
    PassphraseOpt,
    RpcUrlOpt,
    connect_market,
    console,
    emit_json,
    signer,
)
from sterling.config import Settings
from sterling.errors import UsageError

app = typer.Typer(
    help="Your Marketplace balance (payouts, refunds, fees) and withdrawing it.", no_args_is_help=True
)


@app.command("balance")
def balance(
    address: Annotated[
        str | None,
        typer.Argument(help="Whose balance. Default: the signing account (--identity or --dev-account)."),
    ] = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """The wei credited to an account on the Marketplace and not yet withdrawn, and its wallet's ether.

    `--format json` prints `balance_wei` and `ether_wei` as integers (exact), `balance_eth` as a
    decimal string.
    """
    from sterling.sdk.manage import balance as read_balance
    from sterling.sdk.manage import eth_text

    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    if address is not None and (identity is not None or dev_account is not None):
        raise UsageError("give an ADDRESS or a signer (--identity, --dev-account), not both")
    who = (
        address
        if address is not None
        else signer(settings, market, identity, dev_account, passphrase_file).address
    )
    found = read_balance(market, who)
    if fmt is Format.json:
        emit_json(found.to_json())
        return
    console.print(
        f"{found.address} has [bold]{eth_text(found.balance_wei)}[/] ({found.balance_wei} wei) "
        f"credited on Marketplace {found.marketplace}\n"
        f"  wallet: {eth_text(found.ether_wei)} ({found.ether_wei} wei)",
        highlight=False,
        soft_wrap=True,
    )
    if found.balance_wei:
        console.print("  withdraw it with `sterling account withdraw`", highlight=False, soft_wrap=True)


@app.command("withdraw")
def withdraw(
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Send everything the Marketplace credits to the signing account into its wallet.

    Refuses (exit 2) when there is nothing to withdraw, rather than paying gas for nothing.
    """
    from sterling.sdk.manage import eth_text
    from sterling.sdk.manage import withdraw as send

    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    done = send(market, account)
    if fmt is Format.json:
        emit_json(done.to_json())
        return
    console.print(
        f"withdrew [bold]{eth_text(done.amount_wei)}[/] ({done.amount_wei} wei) to {done.address}; "
        f"wallet now {eth_text(done.ether_wei)} ({done.ether_wei} wei)",
        highlight=False,
        soft_wrap=True,
    )
