"""`sterling pool create|join|leave|status|claim|withdraw`: pooled datasets of many contributors.

A pool is one listing to which contributors add one sealed record each, with their own ε cap and
their own consent (see docs/pools.md). Payouts are claimed with a Merkle proof and withdrawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
from sterling.cli.provider import StoreOpt
from sterling.config import Settings
from sterling.errors import UsageError

if TYPE_CHECKING:
    from sterling.chain.marketplace import Marketplace
    from sterling.chain.pools import Pools

app = typer.Typer(help="Pooled datasets: one record per contributor, payouts by proof.", no_args_is_help=True)

PoolsOpt = Annotated[
    str | None,
    typer.Option("--pools", help="Pools contract address. Default: the deployment recorded in --state."),
]
ListingArg = Annotated[int, typer.Argument(help="The pool's listing id.", min=1)]


def _connect(
    settings: Settings, rpc_url: str | None, marketplace: str | None, state: Path | None, pools: str | None
) -> tuple[Marketplace, Pools]:
    from eth_utils.address import is_address

    from sterling.chain.deploy import Deployment
    from sterling.chain.pools import Pools

    market = connect_market(settings, rpc_url, marketplace, state)
    if pools is None:
        pools = Deployment.load(state or settings.chain_state).pools
        if not pools:
            raise UsageError(
                "the recorded deployment has no Pools contract: run `sterling chain deploy` or pass --pools"
            )
    elif not is_address(pools):
        raise UsageError(f"--pools is not an address: {pools!r}")
    client = Pools(market.chain, pools)
    if not client.exists() or not client.is_genuine(market.address):
        raise UsageError(f"{pools} is not a Sterling Pools contract bound to Marketplace {market.address}")
    market.pools = client
    return market, client


def _out(fmt: Format, data: dict[str, Any], text: str) -> None:
    if fmt is Format.json:
        emit_json(data)
    else:
        console.print(text, highlight=False)


@app.command("create")
def create(
    classes: Annotated[str, typer.Option("--classes", help="Class names, comma-separated.")],
    shape: Annotated[str, typer.Option("--shape", help="One record's feature shape, e.g. 6 or 28x28x3.")],
    price_per_job: Annotated[int, typer.Option("--price-per-job", min=0, help="Wei per job.")],
    price_per_epsilon: Annotated[int, typer.Option("--price-per-epsilon", min=0, help="Wei per unit of ε.")],
    epsilon_budget: Annotated[float, typer.Option("--epsilon-budget", help="Total ε the pool may spend.")],
    max_epsilon_per_job: Annotated[
        float, typer.Option("--max-epsilon-per-job", help="Largest ε of one job.")
    ],
    delta: Annotated[float, typer.Option("--delta", help="Largest δ a job may ask for, in (0, 1).")],
    modality: Annotated[str, typer.Option("--modality", help="tabular or image.")] = "tabular",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float64 or uint8.")] = "float32",
    name: Annotated[str, typer.Option("--name", help="A short public name.")] = "",
    description: Annotated[str, typer.Option("--description", help="A public description.")] = "",
    store: StoreOpt = None,
    pools: PoolsOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Open a pool: its public manifest (schema, classes, name) and its listing, you its curator."""
    from sterling.data.dataset import Schema
    from sterling.errors import DatasetError
    from sterling.sdk.pools import create_pool
    from sterling.sdk.provider import ListingTerms
    from sterling.storage.blobs import BlobStore

    try:
        dims = tuple(int(d) for d in shape.lower().split("x"))
        schema = Schema(modality, dims, dtype, tuple(c.strip() for c in classes.split(",") if c.strip()), 1)
    except ValueError as exc:
        raise UsageError(f"--shape must be numbers joined by x (e.g. 28x28x3): {exc}") from None
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    terms = ListingTerms(price_per_job, price_per_epsilon, epsilon_budget, max_epsilon_per_job, delta)
    terms.to_chain()
    settings = Settings.from_env()
    market, client = _connect(settings, rpc_url, marketplace, state, pools)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    created = create_pool(
        client,
        account,
        BlobStore(store or settings.store_url),
        schema=schema,
        terms=terms,
        name=name,
        description=description,
    )
    _out(
        fmt,
        {**created.to_json(), "pools": client.address},
        f"opened pool [bold]#{created.listing_id}[/] at {created.data_uri}",
    )


@app.command("join")
def join(
    listing_id: ListingArg,
    record: Annotated[
        Path, typer.Argument(help="A dataset file (.npz, .csv, .parquet) holding your record.")
    ],
    cap: Annotated[float, typer.Option("--cap", help="The most ε your record may ever be charged.")],
    row: Annotated[int | None, typer.Option("--row", min=0, help="Take this row of a larger file.")] = None,
    label_column: Annotated[
        str, typer.Option("--label-column", help="Label column of a CSV/Parquet.")
    ] = "label",
    enclave: Annotated[
        str | None, typer.Option("--enclave", help="Enclave to seal to. Default: newest trusted.")
    ] = None,
    store: StoreOpt = None,
    pools: PoolsOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Encrypt one record, seal its key to a trusted enclave (bound to you) and join the pool."""
    from dataclasses import replace

    from sterling.cli.enclave import sealing_target
    from sterling.data.dataset import Dataset
    from sterling.data.loaders import load_dataset
    from sterling.sdk.pools import join_pool
    from sterling.storage.blobs import BlobStore

    dataset = load_dataset(record, label_column=label_column)
    if row is not None:
        if row >= dataset.schema.rows:
            raise UsageError(f"--row {row}: {record} has {dataset.schema.rows} rows")
        dataset = Dataset(
            dataset.features[row : row + 1], dataset.labels[row : row + 1], replace(dataset.schema, rows=1)
        )
    settings = Settings.from_env()
    market, client = _connect(settings, rpc_url, marketplace, state, pools)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    pin = market.listing(listing_id).terms.pinned_measurement
    target, shown = sealing_target(settings, market, enclave, state, pins=[pin])
    joined = join_pool(
        market,
        client,
        account,
        BlobStore(store or settings.store_url),
        listing_id,
        dataset,
        cap=cap,
        enclave=target,
    )
    out = {**joined.to_json(), "sealed_to": {k: v for k, v in shown.items() if k != "summary"}}
    _out(
        fmt,
        out,
        f"joined pool #{listing_id} as member {joined.index} (cap ε {cap}); sealed to {shown['summary']}",
    )


@app.command("leave")
def leave(
    listing_id: ListingArg,
    pools: PoolsOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Withdraw your consent: no job claimed from now on uses your record."""
    settings = Settings.from_env()
    market, client = _connect(settings, rpc_url, marketplace, state, pools)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    if client.member_index(listing_id, account.address) is None:
        raise UsageError(f"{account.address} is not a member of pool {listing_id}")
    client.leave(account, listing_id)
    _out(
        fmt, {"listing_id": listing_id, "account": account.address, "left": True}, f"left pool #{listing_id}"
    )


@app.command("status")
def status(
    listing_id: ListingArg,
    account: Annotated[str | None, typer.Option("--account", help="Also show this member.")] = None,
    pools: PoolsOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Members, how many a job claimed now would use, ε spent, and one member's standing."""
    from sterling.sdk.pools import pool_status

    settings = Settings.from_env()
    market, client = _connect(settings, rpc_url, marketplace, state, pools)
    st = pool_status(market, client, listing_id, account=account)
    text = (
        f"pool #{listing_id} ({'open' if st.open else 'closed'}), curator {st.curator}: "
        f"{st.members} members, {st.admitted} admitted now; "
        f"ε spent {st.epsilon_spent:g} of {st.epsilon_budget:g}"
    )
    if st.member is not None:
        m = st.member
        standing = "admitted" if m["admitted_now"] else "not admitted"
        text += (
            f"\n  member {m['index']}: spent at most ε {m['spent_at_most_epsilon']:g}"
            f" of cap {m['cap_micro'] / 1e6:g}; {standing}" + (" (left)" if m["left"] else "")
        )
    _out(fmt, st.to_json(), text)


@app.command("claim")
def claim(
    job_id: Annotated[int, typer.Argument(help="The job whose payout to claim.", min=1)],
    listing_id: ListingArg,
    account: Annotated[
        str | None, typer.Option("--account", help="Claim for this member (default: you).")
    ] = None,
    pools: PoolsOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Claim a share of a pool payout with its Merkle proof (credited; then `sterling pool withdraw`)."""
    from sterling.sdk.pools import claim as claim_share

    settings = Settings.from_env()
    market, client = _connect(settings, rpc_url, marketplace, state, pools)
    caller = signer(settings, market, identity, dev_account, passphrase_file)
    done = claim_share(client, caller, job_id, listing_id, account=account)
    word = "already claimed" if done.already else "claimed"
    _out(
        fmt,
        done.to_json(),
        f"{word} {done.amount} wei of job {job_id} on pool #{listing_id} (leaf {done.index})",
    )


@app.command("withdraw")
def withdraw(
    pools: PoolsOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Withdraw everything Pools credits you (claimed shares, refunds)."""
    settings = Settings.from_env()
    market, client = _connect(settings, rpc_url, marketplace, state, pools)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    owed = client.balance_of(account.address)
    if owed == 0:
        raise UsageError(f"Pools credits nothing to {account.address}")
    paid = client.withdraw(account)
    _out(fmt, {"account": account.address, "withdrawn_wei": str(paid)}, f"withdrew {paid} wei from Pools")
