"""`sterling keys`: create and show identities (an Ethereum account and an X25519 key)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sterling.cli.common import Format, FormatOpt, PassphraseOpt, console, emit_json, read_passphrase
from sterling.config import Settings

app = typer.Typer(
    help="Create and list identities; keys are stored encrypted with a passphrase.", no_args_is_help=True
)


@app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="A name for the identity, e.g. `clinic` or `researcher`.")],
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Create an identity: a new Ethereum account and X25519 key, stored encrypted (keystore v3, scrypt)."""
    from sterling.crypto.keys import Identity

    settings = Settings.from_env()
    ident = Identity.create(settings.keys_dir, name, read_passphrase(settings, passphrase_file, confirm=True))
    out = {"name": name, "address": ident.address, "x25519_public_key": "0x" + ident.x25519_public.hex()}
    if fmt is Format.json:
        emit_json(out)
    else:
        console.print(f"created [bold]{name}[/]: address {ident.address}, keys in {settings.keys_dir}")


@app.command("list")
def list_keys(fmt: FormatOpt = Format.text) -> None:
    """List identities (public parts only; no passphrase needed)."""
    from eth_utils.address import to_checksum_address

    from sterling.crypto.keys import read_header

    settings = Settings.from_env()
    rows = []
    for path in sorted(settings.keys_dir.glob("*.eth.json")):
        name = path.name.removesuffix(".eth.json")
        x_path = settings.keys_dir / f"{name}.x25519.json"
        x_pub = read_header(x_path).get("x25519_public_key") if x_path.exists() else None
        address = read_header(path).get("address", "")
        rows.append(
            {
                "name": name,
                "address": to_checksum_address("0x" + address.removeprefix("0x")),
                "x25519_public_key": "0x" + x_pub if x_pub else None,
            }
        )
    if fmt is Format.json:
        emit_json(rows)
        return
    table = Table(title=f"identities in {settings.keys_dir}")
    for col in ("name", "address", "x25519 public key"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["address"], r["x25519_public_key"] or "-")
    console.print(table)
