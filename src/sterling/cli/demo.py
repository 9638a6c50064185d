"""`sterling demo`: the retinopathy market, end to end, on a local chain with a SIMULATED enclave."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from sterling.cli.common import Format, FormatOpt, console, emit_json, err_console
from sterling.config import Settings

ETH = 10**18


def demo(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="RetinaMNIST retinamnist.npz (real fundus photographs). Default: synthetic."
        ),
    ] = None,
    providers: Annotated[
        int, typer.Option("--providers", min=4, max=20, help="Honest providers (a noise seller joins them).")
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the data, the partitions and training.")] = 0,
    images: Annotated[
        int, typer.Option("--images", min=500, max=100_000, help="Synthetic images in all (without --data).")
    ] = 3600,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state", help="The market's folder; a second run continues it. Default: $STERLING_HOME/demo."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write plots (PNG) and an HTML report here.")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Forget the market in --state and start over.")
    ] = False,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Use the in-process EVM instead of starting anvil.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show the enclave worker's log.")
    ] = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """Diagnose diabetic retinopathy from fundus photographs nobody shows anyone.

    Starts anvil on 127.0.0.1 and a SIMULATED enclave worker; providers publish sealed partitions
    of the data on their own terms (one free for credential holders, one for logistic regression
    only, one selling noise); a hospital researcher trains a DP CNN and a DP logistic regression,
    appraisal flags the noise seller, payments settle on chain, and a job that would overspend a
    budget is refused. Prints a summary (and `--out` plots and an HTML report).
    """
    from sterling.demo import scenario

    settings = Settings.from_env()
    state_dir = state if state is not None else settings.home / "demo"
    if fresh:
        scenario.fresh(state_dir)
    options = scenario.DemoOptions(
        state=state_dir,
        data=data,
        providers=providers,
        seed=seed,
        images=images,
        embedded=embedded,
        anvil=None if embedded else settings.require_anvil(),
    )
    if fmt is Format.json:

        def log(message: str) -> None:
            err_console.print(message, highlight=False)

        reporter = scenario.Reporter(say=log, worker_log=log if verbose else lambda _: None)
        summary = scenario.Demo(options, reporter).run()
        if out is not None:
            _report(summary, out)
        emit_json(summary)
        return
    console.print(
        Panel.fit(
            "Sterling demo: diabetic retinopathy from fundus photographs that never leave their owners\n"
            "[bold yellow]The enclave is a SIMULATION: no TEE hardware here, so it attests nothing.[/]"
        )
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("ε {task.fields[eps]:.2f}"),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(label: str, p: Any) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=max(p.steps, 1), eps=0.0, state=p.state)
            bars.update(tasks[label], completed=p.step, total=max(p.steps, 1), eps=p.epsilon, state=p.state)

        def say(message: str) -> None:
            bars.console.print(f"• {message}", highlight=False)

        def worker_log(message: str) -> None:
            if verbose:
                bars.console.print(f"  [dim]{message}[/]", highlight=False)

        reporter = scenario.Reporter(say=say, progress=progress, worker_log=worker_log)
        summary = scenario.Demo(options, reporter).run()
    _print(summary)
    if out is not None:
        console.print(f"report: {_report(summary, out)}")


def _report(summary: dict[str, Any], out: Path) -> Path:
    from sterling.demo.report import write_report

    return write_report(summary, out)


def _print(s: dict[str, Any]) -> None:
    data = s["data"]
    console.print(
        f"\ndata: {data['source']} ({data['pool_rows']} photographs shared among providers; the researcher "
        f"holds {data['validation_rows']} for validation and {data['test_rows']} for testing)"
        + ("; continued an existing market" if s["continued"] else "")
    )
    t = Table(title="providers: terms, privacy budgets, appraisal and payments")
    for col in ("id", "provider", "rows", "terms", "ε spent", "ε left", "value", "paid ETH"):
        t.add_column(col, justify="left" if col in ("provider", "terms") else "right")
    for p in s["providers"]:
        terms = p["terms"]
        kind = {"credential": "free with St Mary's credential", "logreg_only": "logistic regression only",
                "noise": "sells noise"}.get(p["kind"], "")  # fmt: skip
        price = f"{terms['price_per_job_wei'] / ETH:.3f}/job + {terms['price_per_epsilon_wei'] / ETH:.3f}/ε"
        value = (
            "-" if p["value"] is None else f"{p['value']:+.2f}" + (" [red]flagged[/]" if p["flagged"] else "")
        )
        t.add_row(
            str(p["id"]),
            p["name"],
            str(p["rows"]),
            price + (f", {kind}" if kind else ""),
            f"{p['epsilon_spent']:.2f}",
            f"{p['epsilon_left']:.2f}",
            value,
            f"{p['paid_wei'] / ETH:.4f}",
        )
    console.print(t)
    j = Table(title="the researcher's jobs (tested on their own test set) beside non-private twins")
    for col in (
        "job",
        "model",
        "state",
        "listings",
        "ε/run",
        "accuracy",
        "AUC",
        "non-private acc.",
        "non-private AUC",
    ):
        j.add_column(col, justify="left" if col in ("model", "state") else "right")
    for job in s["jobs"]:

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        j.add_row(
            str(job["id"]),
            job["label"],
            job["state"],
            str(len(job["listings"])),
            f"{job['epsilon']:g}",
            num(job["accuracy"]),
            num(job["auc"]),
            num(job["nonprivate_accuracy"]),
            num(job["nonprivate_auc"]),
        )
        for lid, why in job["excluded"].items():
            console.print(f"  {job['label']}: listing {lid} left out: {why}")
    console.print(j)
    console.print(f"a job that would overspend a budget was refused: [italic]{s['refused_job_reason']}[/]")
    console.print(f"  and by the chain: [italic]{s['refused_on_chain_reason']}[/]")
    console.print(f"done in {s['seconds']:.1f} s (enclave: SIMULATION)")
