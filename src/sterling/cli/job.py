"""`sterling job`: write and check a consumer's job before anything is spent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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
from sterling.errors import UsageError

app = typer.Typer(help="Write, check and (later) submit training jobs.", no_args_is_help=True)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
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
    from sterling.privacy.graph import template as make
    from sterling.privacy.job import Job

    try:
        graph = make(family, classes=classes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    job = Job.parse(
        {
            "listings": [{"listing_id": lid, "epsilon": epsilon} for lid in listing],
            "model": graph.model_dump(mode="json"),
            "training": {
                "epochs": 5,
                "expected_batch_size": 64,
                "target_epsilon": epsilon * 0.9,
                "learning_rate": 0.5,
                "clipping_norm": 1.0,
            },
            "evaluation": {
                "holdout_fraction": 0.2,
                "metrics": ["accuracy"],
                "metrics_epsilon": epsilon * 0.1,
            },
            "payment_cap_wei": payment_cap_wei,
        }
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
            title=f"job passes: {s['model_family']}, {s['steps']} steps, σ={s['noise_multiplier']:.3f}"
        )
        table.add_column("listing")
        table.add_column("ε", justify="right")
        table.add_column("price (wei)", justify="right")
        for lid, eps in s["epsilon_per_listing"].items():
            table.add_row(lid, f"{eps:.4f}", str(s["price_per_listing_wei"][lid]))
        table.add_row("total", f"PLD {s['epsilon_training']['pld']:.4f} + release", str(s["price_total_wei"]))
        console.print(table)
    else:
        for v in report.violations:
            where = f"listing {v.listing_id}" if v.listing_id is not None else "job"
            console.print(
                f"[red]✗[/] {where} [bold]{v.term}[/]: {v.message}" + (f"  ({v.field})" if v.field else "")
            )
    if not report.ok:
        raise typer.Exit(1)
