"""`sterling data`: inspect a dataset, and encrypt or decrypt one with the provider's own key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sterling.cli.common import Format, FormatOpt, PassphraseOpt, console, emit_json, read_passphrase
from sterling.config import Settings

app = typer.Typer(help="Inspect, encrypt and decrypt datasets on your own machine.", no_args_is_help=True)

LabelOpt = Annotated[str, typer.Option("--label-column", help="Label column of a CSV or Parquet file.")]


@app.command("inspect")
def inspect(
    path: Annotated[
        Path, typer.Argument(help="Dataset: .npz, .csv, .parquet, or a folder of class folders.")
    ],
    label_column: LabelOpt = "label",
    fmt: FormatOpt = Format.text,
) -> None:
    """Show a dataset's schema, row count and class counts, changing nothing."""
    from sterling.data.loaders import inspect as inspect_dataset

    info = inspect_dataset(path, label_column=label_column)
    if fmt is Format.json:
        emit_json(info)
        return
    schema = info["schema"]
    table = Table(title=str(path), show_header=False)
    table.add_row("modality", schema["modality"])
    table.add_row("rows", str(info["rows"]))
    table.add_row("shape per row", " × ".join(map(str, schema["shape"])))
    table.add_row("dtype", schema["dtype"])
    table.add_row("classes", ", ".join(f"{k} ({v})" for k, v in info["class_counts"].items()))
    console.print(table)


@app.command("encrypt")
def encrypt(
    path: Annotated[Path, typer.Argument(help="Dataset to encrypt.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for NAME.sealed, NAME.key.json, NAME.manifest.json.")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Base name of the files. Default: the input's.")
    ] = None,
    label_column: LabelOpt = "label",
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Import and encrypt a dataset under a fresh key, kept in a passphrase-protected keystore beside it."""
    from sterling.data.loaders import load_dataset
    from sterling.sdk.provider import encrypt_to_dir

    settings = Settings.from_env()
    dataset = load_dataset(path, label_column=label_column)
    result = encrypt_to_dir(
        dataset,
        out,
        name=name or path.stem,
        passphrase=read_passphrase(settings, passphrase_file, confirm=True),
    )
    if fmt is Format.json:
        emit_json({**result.to_json(), "rows": dataset.schema.rows})
    else:
        console.print(
            f"encrypted {dataset.schema.rows} rows to {result.ciphertext} (cid {result.to_json()['cid']})"
        )


@app.command("decrypt")
def decrypt(
    sealed: Annotated[Path, typer.Argument(help="A NAME.sealed file written by `sterling data encrypt`.")],
    key: Annotated[Path, typer.Option("--key", help="Its NAME.key.json keystore.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the canonical dataset (.npz).")],
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Decrypt your own sealed dataset; nothing is written unless every chunk verifies."""
    from sterling.sdk.provider import decrypt_to

    settings = Settings.from_env()
    dataset = decrypt_to(sealed, key, out, passphrase=read_passphrase(settings, passphrase_file))
    if fmt is Format.json:
        emit_json({"out": str(out), "rows": dataset.schema.rows, "schema": dataset.schema.to_json()})
    else:
        console.print(f"decrypted {dataset.schema.rows} rows to {out}")


@app.command("fundus-samples")
def fundus_samples(
    out: Annotated[Path, typer.Option("--out", help="Where to write the PNG grid.")] = Path(
        "fundus-samples.png"
    ),
    per_grade: Annotated[int, typer.Option("--per-grade", min=1, max=20, help="Images per grade.")] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic images.")] = 0,
) -> None:
    """Draw a grid of synthetic fundus photographs, one row per grade of diabetic retinopathy (PNG)."""
    from sterling.demo.fundus import render_samples_command

    console.print(f"wrote {render_samples_command(out, per_grade, seed)}")
