"""`sterling`: registers the command groups; each lives in its own module."""

from __future__ import annotations

import sys

import typer

from sterling import __version__
from sterling.cli import (
    account,
    bench,
    chain,
    data,
    demo,
    enclave,
    index,
    job,
    keys,
    model,
    pool,
    privacy,
    provider,
    serve,
)
from sterling.cli.common import err_console
from sterling.errors import SterlingError

app = typer.Typer(
    name="sterling",
    help=(
        "Sterling: a marketplace that sells the use of private data, never the data.\n\n"
        "Providers publish encrypted datasets with terms enforced on an EVM chain; consumers "
        "submit training jobs that an attested enclave runs with differential privacy."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(chain.app, name="chain")
app.add_typer(keys.app, name="keys")
app.add_typer(data.app, name="data")
app.add_typer(job.app, name="job")
app.add_typer(enclave.app, name="enclave")
app.add_typer(model.app, name="model")
app.add_typer(privacy.app, name="privacy")
app.add_typer(provider.app, name="provider")
app.add_typer(pool.app, name="pool")
app.add_typer(account.app, name="account")
app.add_typer(index.app, name="index")
app.command("listings")(provider.listings)
app.command("bench")(bench.bench)
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)


@app.command("version")
def version() -> None:
    """Print Sterling's version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point: a user mistake prints one clear line and exits non-zero.

    Typer (click) reports its own usage errors; Sterling's errors are caught
    here and printed as one line, with the exit code their class carries.
    """
    try:
        app()
    except SterlingError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
