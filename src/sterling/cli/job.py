"""`sterling job`: write and check a consumer's job before anything is spent."""

from __future__ import annotations

import json
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
    consumer_keys,
    emit_json,
    signer,
)
from sterling.cli.index import IndexUrlOpt, open_index
from sterling.config import Settings
from sterling.errors import UsageError

app = typer.Typer(
    help="Write, check, submit and watch training jobs, and fetch their models.", no_args_is_help=True
)


def _read_json(path: Path, what: str) -> Any:
    from sterling.jsontext import MAX_DEPTH, line_column, too_deep

    try:
        text = path.read_text()
        deep = too_deep(text)
        if deep is not None:
            line, column = line_column(text, deep)
            raise UsageError(
                f"{what} {path} nests deeper than {MAX_DEPTH} levels (line {line} column {column})"
            )
        return json.loads(text)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UsageError:
        raise
    except ValueError as exc:
        raise UsageError(f"{what} {path} is not valid JSON: {exc}") from None


@app.command("template")
def template(
    family: Annotated[str, typer.Argument(help="logistic_regression, mlp or cnn.")],
    listing: Annotated[list[int], typer.Option("--listing", help="Listing id (repeat for several).")],
    epsilon: Annotated[float, typer.Option("--epsilon", help="ε to reserve on each listing.")] = 1.0,
    classes: Annotated[int, typer.Option("--classes", help="Number of classes the model predicts.")] = 2,
    payment_cap_wei: Annotated[int, typer.Option("--payment-cap-wei", help="Most you will pay.")] = 10**18,
) -> None:
    """Print a job (JSON) to start from: a model of the family, DP-SGD aiming at --epsilon."""
    from sterling.sdk.assemble import template_job

    job = template_job(
        family, listing_ids=listing, epsilon=epsilon, classes=classes, payment_cap_wei=payment_cap_wei
    )
    typer.echo(json.dumps(job.model_dump(mode="json"), indent=2))


@app.command("verify")
def verify(
    job_file: Annotated[Path, typer.Argument(help="The job, as JSON.")],
    listings_file: Annotated[
        Path | None, typer.Option("--listings", help="Listing terms as JSON instead of reading a chain.")
    ] = None,
    consumer: Annotated[
        str | None, typer.Option("--consumer", help="Your address, for policy prices.")
    ] = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Check a job against every listing's terms; all violations at once, or the ε and price summary.

    Exits 0 when the job passes and 1 when it violates a term (the report says which).
    """
    from sterling.privacy.job import Job
    from sterling.privacy.verifier import verify as run_verifier
    from sterling.sdk.consumer import listing_views, views_from_json

    job = Job.parse(_read_json(job_file, "job"), source=str(job_file))
    if listings_file is not None:
        views = views_from_json(_read_json(listings_file, "listings file"))
    else:
        market = connect_market(Settings.from_env(), rpc_url, marketplace, state)
        views = listing_views(market, [a.listing_id for a in job.listings], consumer=consumer)
    report = run_verifier(job, views)
    if fmt is Format.json:
        emit_json({"job_hash": "0x" + job.job_hash().hex(), **report.to_json()})
    elif report.ok:
        s = report.summary
        table = Table(
            title=f"job passes: {s['model_family']}, {s['steps']} steps, σ={s['noise_multiplier']:.3f}, "
            f"ε under replace-one adjacency"
        )
        table.add_column("listing")
        table.add_column("ε, at most", justify="right")
        table.add_column("price (wei)", justify="right")
        for lid, eps in s["epsilon_per_listing"].items():
            table.add_row(lid, f"{eps:.4f}", str(s["price_per_listing_wei"][lid]))
        table.add_row(
            "total",
            f"run {s['epsilon_training']['pld']:.4f}, all releases composed {s['epsilon_total']:.4f}",
            str(s["price_total_wei"]),
        )
        console.print(table)
    else:
        for v in report.violations:
            where = f"listing {v.listing_id}" if v.listing_id is not None else "job"
            console.print(
                f"[red]✗[/] {where} [bold]{v.term}[/]: {v.message}" + (f"  ({v.field})" if v.field else "")
            )
    if not report.ok:
        raise typer.Exit(1)


JobIdArg = Annotated[int, typer.Argument(help="The job's id on chain.", min=1)]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Blob store for the sealed job body: a folder or fsspec URL."),
]


@app.command("submit")
def submit(
    job_file: Annotated[Path, typer.Argument(help="The job, as JSON.")],
    enclave: Annotated[
        str | None,
        typer.Option(
            "--enclave",
            help="Enclave to seal the job to. Default: the newest live one you trust "
            "(see `sterling enclave trust`).",
        ),
    ] = None,
    store: StoreOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    index_url: IndexUrlOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Verify a job, seal it to the enclave, escrow its price and submit it (reserving ε atomically).

    Nothing is stored or paid if the verifier finds a violation; the escrow is exactly the
    price the chain quotes you (policy contracts included), never above the job's payment cap.
    The enclaves to choose from are read from the market index (synced first), so a submission
    costs the same however long the chain's history.
    """
    from sterling.privacy.job import Job
    from sterling.sdk.consumer import JobRejected, submit_job
    from sterling.sdk.trust import TrustFile
    from sterling.storage.blobs import BlobStore

    settings = Settings.from_env()
    job = Job.parse(_read_json(job_file, "job"), source=str(job_file))
    market = connect_market(settings, rpc_url, marketplace, state)
    account, x25519 = consumer_keys(settings, market, identity, dev_account, passphrase_file)
    index = open_index(settings, index_url)
    try:
        index.sync(market)
        result = submit_job(
            market,
            account,
            x25519,
            job,
            BlobStore(store or settings.store_url),
            enclave=enclave,
            trust=TrustFile.in_home(settings.home).load(),
            index=index,
        )
    except JobRejected as exc:
        if fmt is Format.json:
            emit_json({"job_hash": "0x" + job.job_hash().hex(), **exc.report.to_json()})
            raise typer.Exit(1) from None
        raise
    finally:
        index.close()
    if fmt is Format.json:
        emit_json(result.to_json())
        return
    console.print(
        f"submitted job [bold]#{result.job_id}[/]: escrow {result.escrow_wei} wei, sealed to enclave "
        f"{result.enclave}\n  watch it with `sterling job watch {result.job_id}`"
    )


@app.command("watch")
def watch(
    job_id: JobIdArg,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Give up after this many seconds.")
    ] = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Follow a job live: its state, training step and ε spent so far, until it ends.

    The numbers come from the enclave's heartbeats on chain, which carry only public figures.
    `--format json` prints one JSON line per change. Exits 1 if the job failed or was cancelled.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sterling.sdk.consumer import watch as follow

    market = connect_market(Settings.from_env(), rpc_url, marketplace, state)
    if fmt is Format.json:
        final = follow(market, job_id, on_update=lambda p: emit_json(p.to_json()), timeout=timeout)
    else:
        columns = (
            TextColumn("job {task.fields[job]}"),
            TextColumn("[bold]{task.fields[state]}[/]"),
            BarColumn(),
            TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("ε {task.fields[eps]:.3f}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("job", total=1, job=job_id, state="…", eps=0.0)

            def show(p: Any) -> None:
                bar.update(task, completed=p.step, total=max(p.steps, 1), state=p.state, eps=p.epsilon)

            final = follow(market, job_id, on_update=show, timeout=timeout)
        if final.reason:
            console.print(f"job {job_id} {final.state}: {final.reason}")
        elif final.final:
            console.print(f"job {job_id} {final.state}")
    if final.state in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command("result")
def result(
    job_id: JobIdArg,
    out: Annotated[Path, typer.Option("--out", help="Where to write the model bundle (.npz).")],
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Fetch a completed job's model, check its hash against the chain, and decrypt it with your key.

    Writes the model bundle (an .npz without pickles: graph, weights and the released metrics)
    to --out, which appears only once everything verified. A job whose contract kept no
    provider completed without a model: the bundle then holds what was released, no weights.
    """
    from sterling.files import atomic_write
    from sterling.sdk.consumer import fetch_result

    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    _, x25519 = consumer_keys(settings, market, identity, dev_account, passphrase_file)
    bundle = fetch_result(market, job_id, x25519)
    atomic_write(out, bundle.to_bytes())
    info = {"job_id": job_id, "out": str(out), "model_family": bundle.graph.family, **bundle.info}
    if fmt is Format.json:
        emit_json(info)
        return
    if not bundle.has_model:
        console.print(
            f"job {job_id} completed without a model ({bundle.info.get('reason', 'none was trained')}); "
            f"what it released (appraisal, ε charged) is written to {out}\n"
            f"  ε spent {bundle.info.get('epsilon_spent', 0):.3f}; "
            f"check it with `sterling privacy receipt {job_id}`"
        )
        return
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in bundle.info.get("metrics", {}).items()) or "none released"
    console.print(
        f"model of job {job_id} ({bundle.graph.family}) written to {out}\n"
        f"  ε spent {bundle.info.get('epsilon_spent', 0):.3f} over {bundle.info.get('steps')} steps; "
        f"metrics: {metrics}"
    )


@app.command("status")
def status(
    job_id: JobIdArg,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """A job as the chain records it: state, escrow, and per listing ε reserved, charged and paid."""
    from sterling.sdk.consumer import progress

    market = connect_market(Settings.from_env(), rpc_url, marketplace, state)
    doc = {**market.job(job_id).to_json(), "progress": progress(market, job_id).to_json()}
    if fmt is Format.json:
        emit_json(doc)
        return
    table = Table(title=f"job {job_id}: {doc['progress']['state']}, escrow {doc['escrow_wei']} wei")
    for col in ("listing", "ε reserved", "ε charged", "price (wei)", "paid (wei)"):
        table.add_column(col, justify="right")
    for a in doc["allocations"]:
        table.add_row(
            str(a["listing_id"]),
            f"{a['epsilon_reserved']:g}",
            f"{a['epsilon_spent']:g}",
            str(a["price_wei"]),
            str(a["payout_wei"]),
        )
    console.print(table)
    if doc["progress"]["reason"]:
        console.print(f"reason: {doc['progress']['reason']}")


@app.command("cancel")
def cancel(
    job_id: JobIdArg,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Cancel your job before an enclave claims it (or after its lease ran out): full refund."""
    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    account = signer(settings, market, identity, dev_account, passphrase_file)
    escrow = market.job(job_id).escrow
    market.cancel_job(account, job_id)
    if fmt is Format.json:
        emit_json({"job_id": job_id, "state": "cancelled", "refund_wei": escrow})
    else:
        console.print(
            f"job {job_id} cancelled: its escrow of {escrow} wei is credited to your Marketplace "
            f"balance; withdraw it with `sterling account withdraw`",
            highlight=False,
            soft_wrap=True,
        )
