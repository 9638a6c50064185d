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
    from eth_account.signers.local import LocalAccount


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
