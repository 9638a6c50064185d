"""`sterling privacy`: what a DP-SGD run costs in (ε, δ), and the noise a target ε needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from sterling.privacy.mechanisms import Mechanism
    from sterling.sdk.receipts import ReceiptCheck

app = typer.Typer(
    help="Privacy accounting (PLD under replace-one adjacency) and a job's privacy receipt.",
    no_args_is_help=True,
)

SampleRate = Annotated[
    float, typer.Option("--sample-rate", help="Poisson sampling rate q (expected batch / rows).")
]
Steps = Annotated[int, typer.Option("--steps", help="Number of DP-SGD steps.")]
Delta = Annotated[float, typer.Option("--delta", help="δ of the (ε, δ) guarantee.")]


@app.command("epsilon")
def epsilon(
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", help="σ: noise sd over the clipping norm.")
    ],
    sample_rate: SampleRate,
    steps: Steps,
    delta: Delta = 1e-5,
    fmt: FormatOpt = Format.text,
) -> None:
    """ε of DP-SGD with these parameters under replace-one adjacency: PLD (reported) and a Rényi bound.

    Neighbouring datasets differ in one row's value (row counts are public in Sterling). The
    Rényi figure is an upper bound (add/remove at twice the sensitivity), cheap to compute.
    """
    from sterling.privacy.accountant import DpSgdParams
    from sterling.privacy.accountant import epsilon as compute

    eps = compute(DpSgdParams(noise_multiplier, sample_rate, steps, delta))
    if fmt is Format.json:
        emit_json(eps.to_json())
        return
    table = Table(title=f"DP-SGD: σ={noise_multiplier:g}, q={sample_rate:g}, {steps} steps, δ={delta:g}")
    table.add_column("accountant")
    table.add_column("ε", justify="right")
    table.add_row("PLD, replace-one (reported)", f"{eps.pld:.4f}")
    table.add_row("Rényi upper bound", f"{eps.rdp:.4f}")
    console.print(table)


@app.command("calibrate")
def calibrate(
    target_epsilon: Annotated[float, typer.Option("--target-epsilon", help="The ε not to exceed.")],
    sample_rate: SampleRate,
    steps: Steps,
    delta: Delta = 1e-5,
    fmt: FormatOpt = Format.text,
) -> None:
    """The smallest noise multiplier whose PLD ε does not exceed the target (never overshoots)."""
    from sterling.privacy.accountant import DpSgdParams, calibrate_noise
    from sterling.privacy.accountant import epsilon as compute

    sigma = calibrate_noise(target_epsilon=target_epsilon, sample_rate=sample_rate, steps=steps, delta=delta)
    eps = compute(DpSgdParams(sigma, sample_rate, steps, delta))
    out = {"noise_multiplier": sigma, **eps.to_json()}
    if fmt is Format.json:
        emit_json(out)
    else:
        console.print(
            f"noise multiplier {sigma:.4f} gives ε = {eps.pld:.4f} (PLD, replace-one), "
            f"at most {eps.rdp:.4f} (Rényi bound) at δ={delta:g}"
        )


@app.command("receipt")
def receipt(
    job_id: Annotated[int, typer.Argument(help="The job whose privacy receipt to check.")],
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Check a job's privacy receipt without trusting the enclave's figures: exits 1 on any mismatch.

    Fetches the receipt the settlement committed on chain, checks its hash, that it is this job's
    (chain, Marketplace, listings, δ) and that every mechanism in it is one the verified plan
    allows; recomputes each listing's ε from the receipt alone with dp-accounting (PLD,
    replace-one adjacency) and compares it with the micro-ε the chain charged.
    """
    from sterling.config import Settings
    from sterling.sdk.receipts import check_receipt

    market = connect_market(Settings.from_env(), rpc_url, marketplace, state)
    checked = check_receipt(market, job_id)
    if fmt is Format.json:
        emit_json(checked.to_json())
    else:
        _print_receipt(checked)
    if not checked.ok:
        raise typer.Exit(1)


def _print_receipt(checked: ReceiptCheck) -> None:
    r = checked.receipt
    if r is None:
        console.print(f"job {checked.job_id} ({checked.state}) has no receipt: nothing ran on its data")
    else:
        console.print(
            f"job {checked.job_id} ({checked.state}, outcome {r.outcome}): receipt {checked.receipt_uri}\n"
            f"  accounted under {r.plan.neighbours} adjacency at δ {r.plan.delta:g}; "
            f"plan 0x{r.plan.sha256().hex()[:16]}…"
        )
        table = Table()
        for col in ("listing", "what ran on its data", "ε recomputed", "charged (micro-ε)"):
            table.add_column(col, justify="left" if col.startswith("what") else "right")
        for c, eps, on_chain in zip(r.charges, checked.recomputed, checked.charged, strict=False):
            names = ", ".join(_describe(m) for m in c.mechanisms) or "nothing"
            table.add_row(str(c.listing_id), names, f"{eps:.6f}", f"{on_chain:,}")
        console.print(table)
    if checked.ok:
        console.print("[green]the charge on chain is what the receipt's mechanisms cost[/]")
    for p in checked.problems:
        console.print(f"[red]mismatch:[/] {p}")


def _describe(m: Mechanism) -> str:
    from sterling.privacy.mechanisms import DiscreteLaplace, DpSgd

    if isinstance(m, DpSgd):
        return f"{m.name} ({m.steps} DP-SGD steps, σ {m.noise_multiplier:.3g}, q {m.sample_rate:.3g})"
    if isinstance(m, DiscreteLaplace):
        return f"{m.name} (discrete Laplace, ε {m.epsilon:g})"
    return f"{m.name} (Gaussian, σ {m.noise_multiplier:.3g})"
