"""`sterling provider publish|derive|withdraw` and `sterling listings`: selling the use of data, browsing."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
from sterling.cli.index import IndexUrlOpt, open_index
from sterling.config import Settings

if TYPE_CHECKING:
    from sterling.index import ListingRow
from sterling.errors import UsageError

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
        typer.Option(
            "--enclave",
            help="Enclave to seal the data key to. Default: the newest live one you trust "
            "(see `sterling enclave trust`).",
        ),
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
    from sterling.sdk.provider import ListingTerms, publish, read_contract, seal_dataset
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
    from sterling.cli.enclave import sealing_target

    target, shown = sealing_target(
        settings, market, enclave, state, pins=[listing_terms.to_chain()[0].pinned_measurement]
    )
    if fmt is Format.text:
        console.print(f"sealing the data key to {shown['summary']}")
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
    out = {
        **result.to_json(),
        "rows": dataset.schema.rows,
        "modality": dataset.schema.modality,
        "sealed_to": {k: v for k, v in shown.items() if k != "summary"},
    }
    if fmt is Format.json:
        emit_json(out)
        return
    console.print(
        f"listed [bold]#{result.listing_id}[/] ({dataset.schema.rows} rows, {dataset.schema.modality}); "
        f"data hash 0x{result.data_hash.hex()}\n  data uri {result.data_uri}\n  cid {result.cid}"
    )


def listings(
    open_only: Annotated[bool, typer.Option("--open", help="Only listings on sale now.")] = False,
    search: Annotated[
        str, typer.Option("--search", "-q", help="Full-text search over names, descriptions and classes.")
    ] = "",
    class_name: Annotated[str | None, typer.Option("--class", help="Only listings with this class.")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Only this provider's listings.")] = None,
    sort: Annotated[str, typer.Option("--sort", help="id, price, published, epsilon_left or rows.")] = "id",
    descending: Annotated[bool, typer.Option("--desc", help="Largest first.")] = False,
    page: Annotated[int, typer.Option("--page", help="The page, from 1.")] = 1,
    per_page: Annotated[int, typer.Option("--per-page", help="Listings per page, at most 200.")] = 50,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    index_url: IndexUrlOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """List what is on sale, a page at a time: terms, ε left, each dataset's public schema.

    Read from the market index (synced first), so a page costs the same at any market size.
    """
    from sterling.index import ListingQuery

    query = ListingQuery(
        q=search, provider=provider, open_only=open_only, class_name=class_name, sort=sort,
        descending=descending, page=page, per_page=per_page,
    )  # fmt: skip
    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    index = open_index(settings, index_url)
    try:
        index.sync(market)
        found = index.listings(query)
    finally:
        index.close()
    doc = found.map(_listing_json)
    if fmt is Format.json:
        emit_json(doc)
        return
    table = Table(
        title=f"listings on chain {market.chain.chain_id}: page {found.page} of {max(1, found.pages)}, "
        f"{found.total} in all"
    )
    for col in ("id", "name", "modality", "rows", "wei/job", "wei/ε", "ε cap", "ε left", "open"):
        table.add_column(col, justify="left" if col in ("name", "modality") else "right")
    for r in doc["items"]:
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


def _listing_json(row: ListingRow) -> dict[str, Any]:
    item = row.listing.to_json()
    item["name"] = row.manifest.get("name") if row.manifest else None
    item["schema"] = row.manifest.get("schema") if row.manifest else None
    return item


ListingArg = Annotated[int, typer.Argument(help="The listing's id on chain.", min=1)]
# derive's terms: the publish options of the same names, each optional (kept from the parent if absent).
DerivedPricePerJobOpt = Annotated[
    int | None, typer.Option("--price-per-job", help="Wei per job. Default: the parent's.")
]
DerivedPricePerEpsilonOpt = Annotated[
    int | None, typer.Option("--price-per-epsilon", help="Wei per unit of ε. Default: the parent's.")
]
DerivedMaxEpsilonOpt = Annotated[
    float | None,
    typer.Option(
        "--max-epsilon-per-job", "--max-epsilon", help="Largest ε one job may use. Default: the parent's."
    ),
]
DerivedPolicyOpt = Annotated[
    str | None,
    typer.Option("--policy", help="On-chain policy contract; `none` drops it. Default: the parent's."),
]
DerivedPinOpt = Annotated[
    str | None,
    typer.Option(
        "--pin-measurement",
        help="Only enclaves with this measurement (hex) may claim jobs; `none` unpins. "
        "Default: the parent's.",
    ),
]


def _none_or(value: str | None) -> Any:
    """An option that may say `none` (clear it) or be absent (keep the parent's)."""
    from sterling.sdk.manage import KEEP

    if value is None:
        return KEEP
    return None if value.strip().lower() == "none" else value


@app.command("derive")
def derive(
    listing: ListingArg,
    price_per_job: DerivedPricePerJobOpt = None,
    price_per_epsilon: DerivedPricePerEpsilonOpt = None,
    max_epsilon_per_job: DerivedMaxEpsilonOpt = None,
    policy: DerivedPolicyOpt = None,
    pin_measurement: DerivedPinOpt = None,
    price_per_prediction: Annotated[
        int | None,
        typer.Option(
            "--price-per-prediction",
            help="Wei per prediction, where this Marketplace's terms have one. Default: the parent's.",
        ),
    ] = None,
    contract: Annotated[
        Path | None,
        typer.Option(
            "--contract",
            help="The provider contract (Python) to run: it must be the one the data's manifest names.",
        ),
    ] = None,
    no_contract: Annotated[
        bool, typer.Option("--no-contract", help="Run no provider contract on this listing's jobs.")
    ] = False,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Re-list your data under new terms (the paper's re-sharing): same data, same privacy budget.

    Terms not given are the parent listing's. The new listing draws on the budget the data
    already has and can never raise or reset it. The parent stays on sale: take it off with
    `sterling provider withdraw`. Prints the new listing's id and terms.
    """
    from sterling.sdk import manage

    settings = Settings.from_env()
    source = None
    if contract is not None:
        try:
            source = contract.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read provider contract {contract}: {exc}") from None
    market = connect_market(settings, rpc_url, marketplace, state)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    parent = manage.owned(market, account, listing)
    terms = manage.derived_terms(
        parent,
        price_per_job_wei=price_per_job,
        price_per_epsilon_wei=price_per_epsilon,
        max_epsilon_per_job=max_epsilon_per_job,
        policy=_none_or(policy),
        pinned_measurement=_none_or(pin_measurement),
        price_per_prediction_wei=price_per_prediction,
    )
    contract_hash = manage.contract_hash_for(parent, contract_source=source, drop_contract=no_contract)
    child = manage.derive(market, account, listing, terms=terms, contract_hash=contract_hash)
    out = {"listing_id": child.id, "parent": listing, **child.to_json()}
    if fmt is Format.json:
        emit_json(out)
        return
    t = child.terms
    console.print(
        f"derived listing [bold]#{child.id}[/] from #{listing}: {manage.eth_text(t.price_per_job)} per job, "
        f"{manage.eth_text(t.price_per_epsilon)} per ε, at most ε {out['terms']['max_epsilon_per_job']:g} "
        f"per job\n  same data and budget (ε left {out['budget']['epsilon_left']:g}); "
        f"provider contract: {'none' if out['contract_hash'] is None else out['contract_hash']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("withdraw")
def withdraw(
    listing: ListingArg,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Take your listing off sale: no new job may name it; jobs already submitted are unaffected.

    Other listings of the same data (derived ones) stay on sale. This is not `sterling account
    withdraw`, which withdraws your earnings.
    """
    from sterling.sdk import manage

    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    after = manage.withdraw_listing(market, account, listing)
    if fmt is Format.json:
        emit_json({"listing_id": after.id, "active": after.active, "open": after.open})
        return
    console.print(
        f"listing #{after.id} is off sale; jobs already submitted on it go on, and your earnings stay "
        f"in your balance (`sterling account balance`)",
        highlight=False,
        soft_wrap=True,
    )
