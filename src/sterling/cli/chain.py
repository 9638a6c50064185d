"""`sterling chain`: start a local chain, deploy the Marketplace, show its status."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

# Chain modules (web3, eth-account, vyper) load inside the commands that use
# them, so `sterling --help` answers at once.
from sterling.cli.common import Format, FormatOpt, connect_market, console, emit_json, load_account
from sterling.config import Settings
from sterling.errors import ChainUnavailable, UsageError

app = typer.Typer(help="Run a local chain, deploy the Marketplace, and inspect it.", no_args_is_help=True)

StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state",
        help="State folder: the chain's saved state and deployment.json. Default: $STERLING_HOME/chain.",
    ),
]
RpcOpt = Annotated[
    str, typer.Option("--rpc-url", help="JSON-RPC URL of an EVM node, e.g. http://127.0.0.1:8545.")
]


def _state_dir(state: Path | None) -> Path:
    return state if state is not None else Settings.from_env().home / "chain"


def _check_port(port: int | None) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")


@app.command("up")
def up(
    state: StateOpt = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port on 127.0.0.1 (default: a free one).")
    ] = None,
    lease_seconds: Annotated[int, typer.Option("--lease-seconds", min=1, help="Job lease length.")] = 900,
) -> None:
    """Start anvil on 127.0.0.1, deploy the Marketplace (or reuse the one in --state), run until interrupted.

    When ready it prints one JSON line with `rpc_url`, `chain_id`, `marketplace` (and `reused`,
    `state`, `attestation_signer`). The chain's state is saved in the folder every second and on
    exit, so `sterling chain up --state DIR` again continues where it stopped. The attestation
    signer defaults to a SIMULATED platform key kept in the state folder.
    """
    from sterling.chain import node
    from sterling.chain.deploy import ensure_deployment

    _check_port(port)
    settings = Settings.from_env()
    state_dir = _state_dir(state)
    anvil = node.AnvilNode(settings.require_anvil(), port=port, state_dir=state_dir)
    anvil.start()
    stop = threading.Event()
    try:
        chain = node.connect(anvil.rpc_url)
        deployment, reused = ensure_deployment(
            chain, state_dir, deployer=chain.dev_accounts[0], lease_seconds=lease_seconds
        )
        emit_json(
            {
                "rpc_url": anvil.rpc_url,
                "chain_id": chain.chain_id,
                "marketplace": deployment.marketplace,
                "attestation_signer": deployment.attestation_signer,
                "reused": reused,
                "state": str(state_dir),
            }
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set() and anvil.proc is not None and anvil.proc.poll() is None:
            stop.wait(0.5)
        if not stop.is_set():
            code = anvil.proc.returncode if anvil.proc is not None else None
            raise ChainUnavailable(
                f"anvil exited unexpectedly (code {code}); {state_dir} keeps the state it saved last "
                "(at most a second old): `sterling chain up` again continues from there"
            )
    finally:
        anvil.stop()


@app.command("deploy")
def deploy(
    rpc_url: RpcOpt,
    state: StateOpt = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file", help="Deployer key (keystore JSON or hex). Default on anvil: dev account 0."
        ),
    ] = None,
    password_file: Annotated[Path | None, typer.Option("--password-file", help="Keystore password.")] = None,
    attestation_signer: Annotated[
        str | None,
        typer.Option(
            "--attestation-signer", help="Address whose attestations are trusted. Default: simulated."
        ),
    ] = None,
    lease_seconds: Annotated[int, typer.Option("--lease-seconds", min=1, help="Job lease length.")] = 900,
    fmt: FormatOpt = Format.text,
) -> None:
    """Deploy the Marketplace to the chain at --rpc-url (or reuse the one recorded in --state)."""
    from sterling.chain import node
    from sterling.chain.deploy import ensure_deployment

    chain = node.connect(rpc_url)
    if key_file is not None:
        deployer = load_account(key_file, password_file)
    elif chain.dev_accounts:
        deployer = chain.dev_accounts[0]
    else:
        raise UsageError("this chain has no development accounts: pass --key-file")
    if attestation_signer is not None and not _is_address(attestation_signer):
        raise UsageError(f"--attestation-signer is not an address: {attestation_signer!r}")
    deployment, reused = ensure_deployment(
        chain,
        _state_dir(state),
        deployer=deployer,
        attestation_signer=attestation_signer,
        lease_seconds=lease_seconds,
    )
    out = {"rpc_url": rpc_url, "chain_id": chain.chain_id, "marketplace": deployment.marketplace,
           "attestation_signer": deployment.attestation_signer, "block": deployment.block,
           "reused": reused}  # fmt: skip
    if fmt is Format.json:
        emit_json(out)
    else:
        verb = "reused" if reused else "deployed"
        console.print(f"Marketplace {verb} at [bold]{deployment.marketplace}[/] on chain {chain.chain_id}")


def _is_address(text: str) -> bool:
    from eth_utils.address import is_address

    return bool(is_address(text))


@app.command("status")
def status(
    rpc_url: RpcOpt,
    marketplace: Annotated[
        str | None, typer.Option("--marketplace", help="Marketplace address. Default: from --state.")
    ] = None,
    state: StateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Show the chain and the Marketplace: block, listings, jobs, enclaves."""
    m = connect_market(Settings.from_env(), rpc_url, marketplace, state)
    chain = m.chain
    out: dict[str, Any] = {
        "chain_id": chain.chain_id,
        "block": int(chain.w3.eth.block_number),
        "marketplace": m.address,
        "listings": m.listing_count(),
        "jobs": m.job_count(),
        "enclaves": m.enclave_count(),
        "admin": m.admin(),
        "attestation_signer": m.attestation_signer(),
        "lease_seconds": m.lease_seconds(),
        "escrow_and_balances_wei": m.liabilities(),
    }
    if fmt is Format.json:
        emit_json(out)
        return
    table = Table(title=f"Sterling on chain {chain.chain_id}", show_header=False)
    for key, value in out.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command("compile")
def compile_contracts(
    check: Annotated[
        bool, typer.Option("--check", help="Only check the committed artefacts are current.")
    ] = False,
) -> None:
    """Compile the Vyper sources into the committed artefacts (ABI, bytecode)."""
    from vyper.exceptions import VyperException

    from sterling.chain import artifacts

    try:
        fresh = artifacts.compile_all()
    except VyperException as exc:  # a contract author's mistake: show Vyper's message, not a traceback
        raise UsageError(f"the contracts do not compile: {type(exc).__name__}: {exc}") from None
    if check:
        stale = [n for n, a in fresh.items() if a != artifacts.load(n)]
        if stale:
            raise UsageError(f"artefacts out of date: {', '.join(stale)}; run `sterling chain compile`")
        console.print("artefacts match the sources")
        return
    for path in artifacts.write_all(fresh):
        console.print(f"wrote {path}")


@app.command("events")
def events(
    rpc_url: Annotated[
        str | None, typer.Option("--rpc-url", help="JSON-RPC URL. Default: $STERLING_RPC_URL.")
    ] = None,
    marketplace: Annotated[str | None, typer.Option("--marketplace", help="Marketplace address.")] = None,
    state: StateOpt = None,
    from_block: Annotated[int, typer.Option("--from-block", min=0, help="First block to read.")] = 0,
    name: Annotated[
        str | None, typer.Option("--name", help="Only events of this name, e.g. JobCompleted.")
    ] = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Every Marketplace event, oldest first: the chain's own record of what happened."""
    m = connect_market(Settings.from_env(), rpc_url, marketplace, state)
    found = [e for e in m.events(from_block=from_block) if name is None or e.name == name]

    def plain(value: Any) -> Any:
        return "0x" + value.hex() if isinstance(value, bytes) else value

    rows: list[dict[str, Any]] = [
        {"block": e.block, "tx": e.tx_hash, "event": e.name, "args": {k: plain(v) for k, v in e.args.items()}}
        for e in found
    ]
    if fmt is Format.json:
        emit_json(rows)
        return
    table = Table(title=f"Marketplace {m.address} events")
    for col in ("block", "event", "arguments"):
        table.add_column(col)
    for r in rows:
        args = ", ".join(f"{k}={v}" for k, v in r["args"].items() if not str(v).startswith("0x" + "0" * 40))
        table.add_row(str(r["block"]), r["event"], args)
    console.print(table)
