"""What every command shares: output format, printing, and loading accounts."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from sterling.errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from eth_account.signers.local import LocalAccount

    from sterling.chain.marketplace import Marketplace
    from sterling.config import Settings


class Format(StrEnum):
    text = "text"
    json = "json"


FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", help="Output format: `text` for people, `json` for scripts.")
]

# Piped output (logs, CI) gets room for the tables instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def emit_json(data: Any) -> None:
    """One JSON document on stdout (one line, so scripts can read it line by line)."""
    sys.stdout.write(json.dumps(data, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


def load_account(key_file: Path, password_file: Path | None = None) -> LocalAccount:
    """An account from a key file: an Ethereum keystore (JSON) or a hex private key.

    Keys are never printed; errors name the file, never its content.
    """
    from eth_account import Account

    try:
        text = key_file.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read key file {key_file}: {exc.strerror}") from None
    if text.startswith("{"):
        if password_file is None:
            raise UsageError(f"{key_file} is an encrypted keystore: pass --password-file")
        try:
            password = password_file.read_text().rstrip("\n")
            key = Account.decrypt(json.loads(text), password)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot open keystore {key_file}: {type(exc).__name__}") from None
        account: LocalAccount = Account.from_key(key)
        return account
    try:
        account = Account.from_key(text)
    except (ValueError, TypeError):
        raise UsageError(f"{key_file} holds neither a keystore nor a 32-byte hex private key") from None
    return account


RpcUrlOpt = Annotated[
    str | None,
    typer.Option("--rpc-url", help="JSON-RPC URL of the chain. Default: $STERLING_RPC_URL."),
]
MarketplaceOpt = Annotated[
    str | None,
    typer.Option("--marketplace", help="Marketplace address. Default: the deployment recorded in --state."),
]
ChainStateOpt = Annotated[
    Path | None,
    typer.Option("--state", help="Chain state folder with deployment.json. Default: $STERLING_HOME/chain."),
]


def connect_market(
    settings: Settings, rpc_url: str | None, marketplace: str | None, state: Path | None
) -> Marketplace:
    """The Marketplace a command works on, from its options or the recorded deployment."""
    from eth_utils.address import is_address

    from sterling.chain import node
    from sterling.chain.deploy import Deployment
    from sterling.chain.marketplace import Marketplace

    url = rpc_url or settings.rpc_url
    if url is None:
        raise UsageError("no chain given: pass --rpc-url or set STERLING_RPC_URL")
    chain = node.connect(url)
    if marketplace is None:
        state_dir = state or settings.chain_state
        deployment = Deployment.load(state_dir)
        if deployment.chain_id != chain.chain_id:
            raise UsageError(
                f"the deployment in {state_dir} is for chain {deployment.chain_id}, "
                f"but {url} is chain {chain.chain_id}: pass --marketplace"
            )
        marketplace = deployment.marketplace
    elif not is_address(marketplace):
        raise UsageError(f"--marketplace is not an address: {marketplace!r}")
    return Marketplace.at(chain, marketplace)


def read_passphrase(settings: Settings, passphrase_file: Path | None, *, confirm: bool = False) -> str:
    """The passphrase from --passphrase-file, $STERLING_PASSPHRASE, or a hidden prompt."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_text().rstrip("\n")
        except OSError as exc:
            raise UsageError(f"cannot read passphrase file {passphrase_file}: {exc.strerror}") from None
    if settings.passphrase:
        return settings.passphrase
    if not sys.stdin.isatty():
        raise UsageError("a passphrase is needed: pass --passphrase-file or set STERLING_PASSPHRASE")
    return str(typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm))


PassphraseOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file", help="File holding the key passphrase. Default: $STERLING_PASSPHRASE or ask."
    ),
]


IdentityOpt = Annotated[
    str | None,
    typer.Option(
        "--identity", help="Name of your identity in $STERLING_HOME/keys (see `sterling keys new`)."
    ),
]
DevAccountOpt = Annotated[
    int | None,
    typer.Option("--dev-account", help="Use the local chain's development account N instead (anvil only)."),
]


def signer(
    settings: Settings,
    market: Marketplace,
    identity: str | None,
    dev_account: int | None,
    passphrase_file: Path | None,
) -> LocalAccount:
    """The account a command signs with: an identity, or a dev account of a local chain."""
    from sterling.crypto.keys import Identity

    if (identity is None) == (dev_account is None):
        raise UsageError("say who signs: pass exactly one of --identity NAME or --dev-account N")
    if dev_account is not None:
        accounts = market.chain.dev_accounts
        if not accounts:
            raise UsageError("this chain has no development accounts: use --identity")
        if not 0 <= dev_account < len(accounts):
            raise UsageError(f"--dev-account must be between 0 and {len(accounts) - 1}")
        return accounts[dev_account]
    assert identity is not None
    return Identity.load(settings.keys_dir, identity, read_passphrase(settings, passphrase_file)).account


def consumer_keys(
    settings: Settings,
    market: Marketplace,
    identity: str | None,
    dev_account: int | None,
    passphrase_file: Path | None,
) -> tuple[LocalAccount, X25519PrivateKey]:
    """The consumer's account and the X25519 key their models are sealed to.

    An identity holds both; a local chain's dev account gets an X25519 key derived from it.
    """
    from sterling.crypto.keys import Identity, derived_x25519

    if identity is not None and dev_account is None:
        ident = Identity.load(settings.keys_dir, identity, read_passphrase(settings, passphrase_file))
        return ident.account, ident.x25519
    account = signer(settings, market, identity, dev_account, passphrase_file)
    return account, derived_x25519(account)
