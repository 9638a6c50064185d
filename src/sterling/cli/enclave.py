"""`sterling enclave`: attest, register and run an enclave worker; choose the enclaves you trust.

Here no TEE hardware exists, so the enclave runs as a SIMULATION (its
attestation key and sealing secret are files in the chain's state folder),
and every command says so. On SGX (Gramine) or a TDX / SEV-SNP guest the
same commands produce real evidence; see docs/tee.md.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    err_console,
)
from sterling.config import Settings
from sterling.errors import EnclaveError, NotFound, UsageError

if TYPE_CHECKING:
    from sterling.chain.marketplace import Marketplace
    from sterling.enclave.tee import TeeBackend
    from sterling.enclave.worker import Worker
    from sterling.sdk.trust import AttestedEnclave, TrustedEnclave

app = typer.Typer(
    help="Attest, register and run an enclave worker (a SIMULATION here).", no_args_is_help=True
)

NameOpt = Annotated[
    str,
    typer.Option("--name", help="Worker name: each worker has its own signing key, sealed to the enclave."),
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend", help="simulation, sgx-gramine or tsm. Default: detect the hardware, else simulate."
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store", help="Blob store for models: a folder or fsspec URL. Default: $STERLING_HOME/blobs."
    ),
]
AllowOpt = Annotated[
    bool,
    typer.Option(
        "--allow",
        help="Also allow-list the measurement, signing as the Marketplace admin "
        "(a local chain's dev account 0).",
    ),
]


def _state(settings: Settings, state: Path | None) -> Path:
    return state if state is not None else settings.chain_state


def _tee(state_dir: Path, backend: str | None) -> TeeBackend:
    from sterling.enclave.tee import detect

    return detect(state_dir, prefer=backend)


def _worker(
    settings: Settings,
    market: Marketplace,
    state_dir: Path,
    name: str,
    backend: str | None,
    store: str | None,
    poll: float = 0.5,
) -> Worker:
    from sterling.enclave.worker import Worker, WorkerOptions
    from sterling.storage.blobs import BlobStore

    tee = _tee(state_dir, backend)
    platform = getattr(tee, "platform_key", None)
    if platform is not None and platform.address != market.attestation_signer():
        raise EnclaveError(
            f"this Marketplace trusts attestations signed by {market.attestation_signer()}, but the "
            f"simulated platform in {state_dir} signs as {platform.address}: pass the --state the chain "
            "was deployed with"
        )
    return Worker.open(
        market,
        tee,
        state_dir / "enclave",
        BlobStore(store or settings.store_url),
        options=WorkerOptions(name=name, poll_seconds=poll, stream_above=settings.stream_above),
        log=_log,
    )


def _log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    style = "yellow" if message.startswith("[SIMULATION]") else "default"
    err_console.print(f"[dim]{stamp}[/] [{style}]{message}[/]", highlight=False, soft_wrap=True)


def _admin(market: Marketplace, allow: bool) -> Any:
    if not allow:
        return None
    if not market.chain.dev_accounts:
        raise UsageError("--allow signs as a local chain's dev account 0; this chain has none")
    return market.chain.dev_accounts[0]


@app.command("attest")
def attest(
    state: ChainStateOpt = None,
    name: NameOpt = "worker",
    backend: BackendOpt = None,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Print the enclave's measurement, keys and attestation evidence.

    With a chain (--rpc-url or $STERLING_RPC_URL), the evidence binds that chain and Marketplace,
    and a simulation also prints the attestation signature `register` would present.
    """
    from sterling.enclave.keymanager import KeyManager, worker_account
    from sterling.enclave.tee import binding_report_data

    settings = Settings.from_env()
    state_dir = _state(settings, state)
    tee = _tee(state_dir, backend)
    keys = KeyManager(tee, state_dir / "enclave")
    account = worker_account(tee, state_dir / "enclave", name)
    out: dict[str, Any] = {
        "backend": tee.name,
        "simulated": tee.simulated,
        "mode": tee.status(),
        "measurement": "0x" + tee.measurement().hex(),
        "worker": name,
        "signing_address": account.address,
        "hpke_public_key": "0x" + keys.public_key.hex(),
    }
    report_data = bytes(64)
    if rpc_url or settings.rpc_url:
        market = connect_market(settings, rpc_url, marketplace, state)
        report_data = binding_report_data(
            chain_id=market.chain.chain_id,
            marketplace=market.address,
            enclave=account.address,
            hpke_public_key=keys.public_key,
        )
        out["chain_id"], out["marketplace"] = market.chain.chain_id, market.address
        sign = getattr(tee, "attest", None)
        if sign is not None:
            out["attestation"] = (
                "0x"
                + bytes(
                    sign(
                        chain_id=market.chain.chain_id,
                        marketplace=market.address,
                        enclave=account.address,
                        hpke_public_key=keys.public_key,
                    )
                ).hex()
            )
    out["evidence"] = tee.evidence(report_data).to_json()
    if fmt is Format.json:
        emit_json(out)
        return
    table = Table(title=f"enclave ({out['mode']})", show_header=False)
    for key in ("backend", "measurement", "worker", "signing_address", "hpke_public_key", "attestation"):
        if key in out:
            table.add_row(key, str(out[key]))
    console.print(table)


@app.command("register")
def register(
    state: ChainStateOpt = None,
    name: NameOpt = "worker",
    backend: BackendOpt = None,
    allow: AllowOpt = False,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Register this enclave worker on chain (its attestation is checked there with ecrecover)."""
    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    worker = _worker(settings, market, _state(settings, state), name, backend, None)
    registered = worker.register(admin=_admin(market, allow))
    status = {**worker.status(), "registered_now": registered}
    if fmt is Format.json:
        emit_json(status)
    else:
        verb = "registered" if registered else "already registered"
        console.print(f"{verb}: {worker.address} ([yellow]{status['mode']}[/])")


@app.command("run")
def run(
    state: ChainStateOpt = None,
    name: NameOpt = "worker",
    backend: BackendOpt = None,
    allow: AllowOpt = False,
    store: StoreOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Handle the jobs waiting now, then exit.")] = False,
    poll: Annotated[
        float, typer.Option("--poll", min=0.05, help="Seconds between looks at the chain.")
    ] = 0.5,
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Run an enclave worker: register if needed, then claim, verify, train and settle jobs.

    Several workers may run against one chain (give each a --name); a job whose worker dies is
    taken over by another when its lease runs out. Stop with Ctrl-C.
    """
    import signal

    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    worker = _worker(settings, market, _state(settings, state), name, backend, store, poll)
    worker.register(admin=_admin(market, allow))
    status = worker.status()
    if fmt is Format.json:
        emit_json({"event": "ready", **status})
    else:
        _log(
            f"{status['mode']}: worker {name} at {worker.address}, measurement {status['measurement'][:18]}…"
        )
    if once:
        handled = worker.poll()
        if fmt is Format.json:
            emit_json({"event": "done", "jobs": [h.to_json() for h in handled]})
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker.run(stop)


@app.command("status")
def status(
    rpc_url: RpcUrlOpt = None,
    marketplace: MarketplaceOpt = None,
    state: ChainStateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """The enclaves registered on the Marketplace: who attested each, whether you trust it, simulation."""
    from sterling.sdk.trust import TrustFile, announcements, live_attested

    settings = Settings.from_env()
    market = connect_market(settings, rpc_url, marketplace, state)
    signer = market.attestation_signer()
    state_dir = _state(settings, state)
    simulated = _simulated_signer(state_dir, signer)
    trust = TrustFile.in_home(settings.home).load()
    rows: list[dict[str, Any]] = [
        {
            **e.to_json(),
            "live": market.is_enclave(e.address),
            "simulated": _simulated_signer(state_dir, e.signer),
            "trusted": trust.entry(e.measurement, e.signer) is not None,
        }
        for e in live_attested(market)
    ]
    announced = announcements(market)
    out = {
        "attestation_signer": signer,
        "simulated": simulated,
        "enclaves": rows,
        "announced": [a.to_json() for a in announced],
    }
    if fmt is Format.json:
        emit_json(out)
        return
    mode = "[yellow]SIMULATION (a local key signs attestations)[/]" if simulated else "attestation service"
    table = Table(title=f"enclaves on chain {market.chain.chain_id}: {len(rows)} live, attested by {mode}")
    for col in ("address", "measurement", "attested by", "you trust it"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["address"], r["measurement"][:18] + "…", r["signer"], "yes" if r["trusted"] else "no")
    console.print(table)
    for a in announced:
        console.print(f"[yellow]note:[/] {a.describe()}")


# ------------------------------------------------------------------ trust


def _simulated_signer(state_dir: Path, signer: str) -> bool:
    """Whether `signer` is the SIMULATED platform key kept in `state_dir` (never creates one)."""
    from sterling.chain.deploy import SIM_PLATFORM_KEY_FILE, simulated_platform_key

    path = state_dir / SIM_PLATFORM_KEY_FILE
    return path.exists() and simulated_platform_key(state_dir).address == signer


def sealing_target(
    settings: Settings,
    market: Marketplace,
    address: str | None,
    state: Path | None,
    *,
    pins: list[bytes],
) -> tuple[AttestedEnclave, dict[str, Any]]:
    """The trusted enclave a command seals to, and how to show it (`summary` is one line of text).

    Trust comes from `$STERLING_HOME/trust.json` (`sterling enclave trust`); an untrusted enclave
    is refused with the command that would trust it.
    """
    from sterling.sdk.trust import TrustFile, announcements, choose_enclave

    trust = TrustFile.in_home(settings.home).load()
    target = choose_enclave(market, address, trust=trust, pins=pins)
    entry = trust.entry(target.measurement, target.signer)
    simulated = bool(entry and entry.simulated) or _simulated_signer(_state(settings, state), target.signer)
    shown: dict[str, Any] = {
        "address": target.address,
        "measurement": "0x" + target.measurement.hex(),
        "signer": target.signer,
        "simulated": simulated,
    }
    mode = ", [yellow]SIMULATION: attests nothing[/]" if simulated else ""
    announced = announcements(market)
    shown["announced"] = [a.to_json() for a in announced]
    shown["summary"] = (
        f"enclave {target.address} (measurement {shown['measurement']}, attested by {target.signer}{mode})"
        + "".join(f"\n  [yellow]note:[/] {a.describe()}" for a in announced)
    )
    return target, shown


MeasurementArg = Annotated[
    str | None, typer.Argument(help="The enclave build's measurement (32 bytes of hex), as you checked it.")
]
SignerOpt = Annotated[
    str | None,
    typer.Option("--signer", help="The attestation signer (address) you trust to attest that measurement."),
]


@app.command("trust")
def trust(
    measurement: MeasurementArg = None,
    signer: SignerOpt = None,
    simulated: Annotated[
        bool,
        typer.Option(
            "--simulated",
            help="Trust this machine's SIMULATED enclave: Sterling's own code measurement, attested by "
            "the simulated platform key in --state. For a local chain only: it attests nothing.",
        ),
    ] = False,
    list_: Annotated[bool, typer.Option("--list", help="Show the enclaves you trust.")] = False,
    note: Annotated[str, typer.Option("--note", help="Why you trust it (kept with the entry).")] = "",
    state: ChainStateOpt = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Seal data keys and job bodies to enclaves with MEASUREMENT attested by --signer from now on.

    Your client seals only to an enclave whose measurement and attestation signer you trust here
    (kept in $STERLING_HOME/trust.json), never merely to whatever the Marketplace registered: its
    admin chooses the signer. Check the measurement against the enclave's published build and the
    signer against the attestation service you rely on first.
    """
    from sterling.sdk.trust import TrustedEnclave, TrustFile, parse_measurement, parse_signer

    settings = Settings.from_env()
    store = TrustFile.in_home(settings.home)
    if list_:
        if measurement or signer or simulated:
            raise UsageError("--list takes no measurement, --signer or --simulated")
        _show_trust(store.load().entries, store.path, fmt)
        return
    if simulated:
        from sterling.chain.deploy import SIM_PLATFORM_KEY_FILE, simulated_platform_key
        from sterling.enclave.tee import code_measurement

        state_dir = _state(settings, state)
        if not (state_dir / SIM_PLATFORM_KEY_FILE).exists():
            raise UsageError(f"no simulated platform in {state_dir}: start the chain there first")
        own = code_measurement()
        if measurement is not None and parse_measurement(measurement) != own:
            raise UsageError(f"the simulated enclave here measures 0x{own.hex()}, not {measurement}")
        if signer is not None and parse_signer(signer) != simulated_platform_key(state_dir).address:
            raise UsageError(f"the simulated platform in {state_dir} is not {signer}")
        entry = TrustedEnclave(
            own,
            simulated_platform_key(state_dir).address,
            simulated=True,
            note=note or f"SIMULATION in {state_dir}",
        )
    else:
        if measurement is None or signer is None:
            raise UsageError(
                "trusting an enclave takes its MEASUREMENT and --signer ADDRESS (the attestation signer "
                "you checked), or --simulated for this machine's simulated enclave; --list shows them"
            )
        entry = TrustedEnclave(parse_measurement(measurement), parse_signer(signer), note=note)
    store.add(entry)
    if fmt is Format.json:
        emit_json({"trusted": entry.to_json(), "file": str(store.path)})
        return
    mode = " [yellow](SIMULATION: attests nothing)[/]" if entry.simulated else ""
    console.print(
        f"trusting measurement 0x{entry.measurement.hex()} attested by {entry.signer}{mode}; "
        f"kept in {store.path}"
    )


@app.command("untrust")
def untrust(
    measurement: Annotated[str, typer.Argument(help="A measurement you trust (see `trust --list`).")],
    signer: Annotated[
        str | None, typer.Option("--signer", help="Forget only its pairing with this signer.")
    ] = None,
    fmt: FormatOpt = Format.text,
) -> None:
    """Stop sealing to enclaves with MEASUREMENT (attested by --signer, or by any signer)."""
    from sterling.sdk.trust import TrustFile, parse_measurement, parse_signer

    store = TrustFile.in_home(Settings.from_env().home)
    wanted = parse_measurement(measurement)
    removed = store.remove(wanted, parse_signer(signer) if signer else None)
    if not removed:
        raise NotFound(f"you do not trust measurement {measurement}" + (f" with {signer}" if signer else ""))
    if fmt is Format.json:
        emit_json({"removed": removed, "file": str(store.path)})
    else:
        console.print(f"no longer trusting 0x{wanted.hex()} ({removed} entries removed from {store.path})")


def _show_trust(entries: tuple[TrustedEnclave, ...], path: Path, fmt: Format) -> None:
    if fmt is Format.json:
        emit_json({"file": str(path), "enclaves": [e.to_json() for e in entries]})
        return
    table = Table(title=f"enclaves you trust ({path})")
    for col in ("measurement", "attestation signer", "mode", "added", "note"):
        table.add_column(col)
    for e in entries:
        mode = "[yellow]SIMULATION[/]" if e.simulated else ""
        table.add_row("0x" + e.measurement.hex(), e.signer, mode, e.added, e.note)
    console.print(table)
