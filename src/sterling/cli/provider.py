"""`sterling provider publish` and `sterling listings`: selling the use of a dataset, and browsing."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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
from sterling.errors import SterlingError, UsageError

app = typer.Typer(help="Publish datasets for sale (the provider's side).", no_args_is_help=True)

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Blob store: a folder or fsspec URL (s3://, memory://). Default: $STERLING_HOME/blobs.",
    ),
]


@app.command("publish")
def publish(
    path: Annotated[
        Path, typer.Argument(help="Dataset: .npz, .csv, .parquet, or a folder of class folders of images.")
    ],
    price_per_job: Annotated[int, typer.Option("--price-per-job", help="Wei per job.")],
    price_per_epsilon: Annotated[int, typer.Option("--price-per-epsilon", help="Wei per unit of ε.")],
    epsilon_budget: Annotated[
        float, typer.Option("--epsilon-budget", help="Total ε this data may ever spend.")
    ],
    max_epsilon_per_job: Annotated[
        float, typer.Option("--max-epsilon-per-job", help="Largest ε one job may use.")
    ],
    delta: Annotated[float, typer.Option("--delta", help="Largest δ a job may ask for, in (0, 1).")],
    terms: Annotated[
        Path | None,
        typer.Option("--terms", help="Provider contract (Python source) the enclave runs on each job."),
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="On-chain policy contract (allow-list, credential, ...).")
    ] = None,
    pin_measurement: Annotated[
        str | None,
        typer.Option("--pin-measurement", help="Only enclaves with this measurement may claim jobs."),
    ] = None,
    enclave: Annotated[
        str | None,
        typer.Option("--enclave", help="Enclave to seal the data key to. Default: the newest live one."),
    ] = None,
    allow_family: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-family", help="Allow only this model family (repeat): logistic_regression, mlp, cnn."
        ),
    ] = None,
    appraisal_fee: Annotated[
        int,
        typer.Option(
            "--appraisal-fee", min=0, help="Wei paid if a consumer drops your data after appraisal."
        ),
    ] = 0,
    name: Annotated[str, typer.Option("--name", help="A short public name for the listing.")] = "",
    description: Annotated[str, typer.Option("--description", help="A public description.")] = "",
    label_column: Annotated[
        str, typer.Option("--label-column", help="Label column of a CSV/Parquet file.")
    ] = "label",
    store: StoreOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Import a dataset, encrypt it, store the ciphertext, seal its key to the enclave, and list it on chain.

    Every input is checked before anything is stored or sent; the listing is created by one
    transaction or not at all. Prints the listing id, the data hash and the data URI.
    """
    from sterling.data.loaders import load_dataset
    from sterling.sdk.provider import ListingTerms, choose_enclave, publish, read_contract, seal_dataset
    from sterling.storage.blobs import BlobStore

    settings = Settings.from_env()
    listing_terms = ListingTerms(
        price_per_job_wei=price_per_job,
        price_per_epsilon_wei=price_per_epsilon,
        epsilon_budget=epsilon_budget,
        max_epsilon_per_job=max_epsilon_per_job,
        delta=delta,
        policy=policy,
        pinned_measurement=pin_measurement,
    )
    listing_terms.to_chain()  # refuse bad terms before touching anything
    families = tuple(allow_family) if allow_family else None
    from sterling.privacy.graph import FAMILIES

    if families and not set(families) <= set(FAMILIES):
        raise UsageError(f"--allow-family takes {', '.join(FAMILIES)}; got {', '.join(families)}")
    contract_source = None
    if terms is not None:
        try:
            contract_source = terms.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read provider contract {terms}: {exc}") from None
        read_contract(contract_source)
    dataset = load_dataset(path, label_column=label_column)
    market = connect_market(settings, rpc_url, marketplace, state)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    target = choose_enclave(market, enclave)
    blobs = BlobStore(store or settings.store_url)
    status = console.status("encrypting and storing") if fmt is Format.text else contextlib.nullcontext()
    with status:
        sealed = seal_dataset(
            dataset,
            blobs,
            name=name or path.stem,
            description=description,
            contract_source=contract_source,
            allowed_families=families,
            appraisal_fee_wei=appraisal_fee,
        )
    result = publish(market, account, sealed, listing_terms, enclave=target)
    out = {**result.to_json(), "rows": dataset.schema.rows, "modality": dataset.schema.modality}
    if fmt is Format.json:
        emit_json(out)
        return
    console.print(
        f"listed [bold]#{result.listing_id}[/] ({dataset.schema.rows} rows, {dataset.schema.modality}); "
        f"data hash 0x{result.data_hash.hex()}\n  data uri {result.data_uri}\n  cid {result.cid}"
    )


def _manifest_or_none(uri: str) -> dict[str, Any] | None:
    from sterling.storage.manifest import read_manifest

    try:
        return read_manifest(uri)
    except (SterlingError, OSError, ValueError):
        return None


def listings(
    open_only: Annotated[bool, typer.Option("--open", help="Only listings on sale now.")] = False,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """List what is on sale: terms, ε left, and each dataset's public schema (from its manifest)."""
    market = connect_market(Settings.from_env(), rpc_url, marketplace, state)
    rows = []
    for listing in market.listings(open_only=open_only):
        item = listing.to_json()
        manifest = _manifest_or_none(listing.data_uri)
        item["name"] = manifest.get("name") if manifest else None
        item["schema"] = manifest.get("schema") if manifest else None
        rows.append(item)
    if fmt is Format.json:
        emit_json(rows)
        return
    table = Table(title=f"listings on chain {market.chain.chain_id}")
    for col in ("id", "name", "modality", "rows", "wei/job", "wei/ε", "ε cap", "ε left", "open"):
        table.add_column(col, justify="left" if col in ("name", "modality") else "right")
    for r in rows:
        schema = r["schema"] or {}
        table.add_row(
            str(r["id"]),
            r["name"] or "?",
            str(schema.get("modality", "?")),
            str(schema.get("rows", "?")),
            str(r["terms"]["price_per_job_wei"]),
            str(r["terms"]["price_per_epsilon_wei"]),
            f"{r['terms']['max_epsilon_per_job']:g}",
            f"{r['budget']['epsilon_left']:g}",
            "yes" if r["open"] else "no",
        )
    console.print(table)
