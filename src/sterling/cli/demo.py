"""`sterling demo`: the end-to-end flow, on a local anvil chain."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from sterling.cli.common import Format, FormatOpt, console, emit_json
from sterling.config import Settings

ETH = 10**18


def demo(
    fmt: FormatOpt = Format.text,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Use the in-process EVM instead of starting anvil.")
    ] = False,
) -> None:
    """Run the demo: a market of providers, a consumer's job, settlement on chain.

    Starts anvil on 127.0.0.1 (or the embedded EVM), deploys the Marketplace,
    registers a SIMULATED enclave, and walks one job from submission to
    payment; a second job that would overspend a budget is refused.
    """
    from sterling.chain import node
    from sterling.demo import ledger

    start = time.perf_counter()
    chain = node.embedded() if embedded else node.start_anvil(Settings.from_env().require_anvil())
    try:
        if fmt is Format.json:
            report = ledger.run(chain)
        else:
            console.print(
                Panel.fit("Sterling demo: enclave is a [bold yellow]SIMULATION[/] (no TEE hardware)")
            )
            with console.status("starting") as status:
                report = ledger.run(chain, step=lambda s: status.update(s))
    finally:
        chain.close()
    seconds = round(time.perf_counter() - start, 2)
    if fmt is Format.json:
        emit_json({**asdict(report), "enclave_mode": "simulation", "seconds": seconds})
        return
    table = Table(title=f"Listings on chain {report.chain_id} (Marketplace {report.marketplace})")
    for col in ("id", "provider", "policy", "ETH/job", "ETH/ε", "ε spent", "ε left", "paid ETH"):
        text = col in ("provider", "policy")
        table.add_column(col, justify="left" if text else "right", no_wrap=True)
    for p in report.providers:
        t = p["terms"]
        table.add_row(
            str(p["id"]),
            p["name"],
            p["policy_kind"] or "-",
            f"{t['price_per_job_wei'] / ETH:.4f}",
            f"{t['price_per_epsilon_wei'] / ETH:.4f}",
            f"{p['epsilon_spent']:.2f}",
            f"{p['epsilon_left']:.2f}",
            f"{p['paid_wei'] / ETH:.4f}",
        )
    console.print(table)
    for job in report.jobs:
        console.print(
            f"job {job['id']}: [bold]{job['state']}[/], escrow {job['escrow_wei'] / ETH:.4f} ETH, "
            f"paid {job['paid_wei'] / ETH:.4f} ETH to the providers of {len(job['listings'])} listings "
            "(credential holders pay nothing)"
        )
    console.print(f"second job refused by the chain: [italic]{report.refused_job_reason}[/]")
    console.print(f"done in {seconds:.1f} s")
