"""`sterling privacy`: what a DP-SGD run costs in (ε, δ), and the noise a target ε needs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sterling.cli.common import Format, FormatOpt, console, emit_json

app = typer.Typer(
    help="Privacy accounting for DP-SGD (PLD, with RDP as a cross-check).", no_args_is_help=True
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
    """ε of DP-SGD with these parameters, under the PLD accountant (reported) and RDP (cross-check)."""
    from sterling.privacy.accountant import DpSgdParams
    from sterling.privacy.accountant import epsilon as compute

    eps = compute(DpSgdParams(noise_multiplier, sample_rate, steps, delta))
    if fmt is Format.json:
        emit_json(eps.to_json())
        return
    table = Table(title=f"DP-SGD: σ={noise_multiplier:g}, q={sample_rate:g}, {steps} steps, δ={delta:g}")
    table.add_column("accountant")
    table.add_column("ε", justify="right")
    table.add_row("PLD (reported)", f"{eps.pld:.4f}")
    table.add_row("RDP (cross-check)", f"{eps.rdp:.4f}")
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
            f"noise multiplier {sigma:.4f} gives ε = {eps.pld:.4f} (PLD), {eps.rdp:.4f} (RDP) at δ={delta:g}"
        )
