"""`sterling model`: use a completed job's model through the enclave, paying per prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
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
from sterling.errors import DatasetError, UsageError

app = typer.Typer(
    help="Buy predictions from a completed job's model, served by the enclave.", no_args_is_help=True
)


def read_inputs(path: Path) -> np.ndarray:
    """Inputs to predict: a .npy array, an .npz (`features` or `x`), or any dataset file Sterling imports."""
    from sterling.data.dataset import NPZ_ERRORS
    from sterling.data.loaders import load_dataset

    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    try:
        if path.suffix.lower() == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                for key in ("features", "x", "X", "test_images"):
                    if key in npz.files:
                        return np.asarray(npz[key])
            raise UsageError(f"{path}: no array named features, x or test_images")
    except NPZ_ERRORS as exc:
        raise UsageError(f"{path}: not a numpy file ({type(exc).__name__})") from None
    try:
        return load_dataset(path).features
    except DatasetError as exc:
        raise UsageError(str(exc)) from None


@app.command("predict")
def predict(
    job_id: Annotated[int, typer.Argument(help="The completed job whose model to use.", min=1)],
    inputs: Annotated[
        Path, typer.Argument(help="Inputs: .npy, .npz (features or x), CSV, Parquet or images.")
    ],
    fee_wei: Annotated[int, typer.Option("--fee-wei", min=1, help="What you pay for the batch, in wei.")] = 10
    ** 15,
    name: Annotated[str, typer.Option("--name", help="The enclave worker that settled the job.")] = "worker",
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the predictions as JSON here.")
    ] = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    identity: IdentityOpt = None,
    dev_account: DevAccountOpt = None,
    passphrase_file: PassphraseOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Predict a batch with job JOB's model in the enclave and pay the providers for it on chain.

    The enclave attributes each prediction to the providers whose data most influenced it and
    signs the batch's weights; your payment is split by them (by the weights fixed at settlement
    when the job did not pay for attribution). The enclave here is a SIMULATION run in this process.
    """
    import json

    from sterling.enclave.keymanager import worker_account
    from sterling.enclave.serving import Server
    from sterling.enclave.tee import detect
    from sterling.files import atomic_write

    settings = Settings.from_env()
    x = read_inputs(inputs)
    market = connect_market(settings, rpc_url, marketplace, state)
    payer = signer(settings, market, identity, dev_account, passphrase_file)
    state_dir = state if state is not None else settings.chain_state
    tee = detect(state_dir)
    server = Server(market, tee, state_dir / "enclave", worker_account(tee, state_dir / "enclave", name))
    served = server.predict(job_id, x, payer=payer.address)
    server.pay(served, payer, fee_wei=fee_wei)
    doc = {**served.to_json(), "fee_wei": fee_wei, "enclave": served.enclave, "simulated": tee.simulated}
    if out is not None:
        atomic_write(out, json.dumps(doc, indent=1).encode())
    if fmt is Format.json:
        emit_json(doc)
        return
    listings = [a.listing_id for a in market.job(job_id).allocations]
    total = sum(served.weights) or 1
    table = Table(title=f"{len(x)} predictions from job {job_id}; {fee_wei} wei split among its providers")
    table.add_column("listing", justify="right")
    table.add_column("share of the fee", justify="right")
    for lid, w in zip(listings, served.weights, strict=True):
        table.add_row(str(lid), f"{w / total:.1%}")
    console.print(table)
    shown = ", ".join(served.predictions[:10]) + (" …" if len(x) > 10 else "")
    console.print(f"predictions: {shown}")
