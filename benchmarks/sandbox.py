"""Latency of a provider-contract check in the WebAssembly sandbox, cold and warm.

Run: `sterling bench sandbox --format json`.

The contract is the shipped `hospital_credential` example, checking a request that carries a
valid credential, so each check makes one host `recover` call (EIP-191 recovery in the host).

- cold: the first check in a fresh Python process (a subprocess), including compiling the
  MicroPython WASI module (the Engine and Module are compiled once per process, lazily);
- warm: the median of N checks in this process once the module is cached: a fresh store and
  instance per check, the static checks, the run, the host call and the result's validation;
- fuel: the wasm fuel one check uses, against the default limit.

Goal: warm ≤ 20 ms.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from rich.table import Table

from sterling.enclave.contracts import check_provider, example, set_constant
from sterling.enclave.sandbox import Limits, Sandbox

_HOSPITAL_KEY = "0x" + "11" * 32
_CONSUMER_KEY = "0x" + "22" * 32


class _Host:
    """The host API with only what the example needs: recover (as the enclave worker does it)."""

    def job(self) -> dict[str, Any]:
        return {}

    def listing(self) -> dict[str, Any]:
        return {}

    def chain_call(self, address: str, signature: str, args: list[Any]) -> Any:
        raise ValueError("no chain in this benchmark")

    def recover(self, message: str, signature: str) -> str:
        address: str = Account.recover_message(encode_defunct(text=message), signature=signature)
        return address


def _case() -> tuple[str, dict[str, Any]]:
    hospital, consumer = Account.from_key(_HOSPITAL_KEY), Account.from_key(_CONSUMER_KEY)
    source = set_constant(example("hospital_credential"), "HOSPITAL", hospital.address)
    text = "sterling:credential:" + consumer.address.lower()
    credential = hospital.sign_message(encode_defunct(text=text)).signature.to_0x_hex()
    request = {
        "listing_id": 1,
        "consumer": consumer.address,
        "epsilon": 1.0,
        "delta": 1e-5,
        "model_family": "logistic_regression",
        "purpose": "screening for diabetic retinopathy",
        "job_name": "bench",
        "noise_multiplier": 1.1,
        "steps": 100,
        "credentials": [credential],
        "chain_id": 31337,
        "marketplace": "0x" + "cd" * 20,
    }
    return source, request


def _check_once() -> float:
    """One check in this process, in seconds (asserting the example accepts)."""
    source, request = _case()
    start = time.perf_counter()
    decision = check_provider(Sandbox(), source, request, host=_Host())
    elapsed = time.perf_counter() - start
    assert decision.accept, decision
    return elapsed


def _cold_seconds() -> float:
    code = "import json, benchmarks_sandbox as b; print(json.dumps(b._check_once()))"
    # Load this file as a module in a fresh interpreter, so nothing is compiled or cached yet.
    loader = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('benchmarks_sandbox', {__file__!r}); "
        "m = importlib.util.module_from_spec(spec); sys.modules['benchmarks_sandbox'] = m; "
        "spec.loader.exec_module(m); "
    )
    out = subprocess.run(
        [sys.executable, "-c", loader + code], capture_output=True, text=True, check=True, timeout=300
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def run(*, quick: bool = False) -> dict[str, Any]:
    repeats = 20 if quick else 200
    cold = _cold_seconds()
    source, request = _case()
    sandbox, host = Sandbox(), _Host()
    check_provider(sandbox, source, request, host=host)  # compile here, outside the timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        check_provider(sandbox, source, request, host=host)
        times.append(time.perf_counter() - start)
    fuel = sandbox.run(source, "check", request, host=host).fuel_used
    return {
        "cold_ms": round(cold * 1000, 1),
        "warm_ms": round(statistics.median(times) * 1000, 2),
        "warm_p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))] * 1000, 2),
        "warm_runs": repeats,
        "goal_warm_ms": 20,
        "fuel_used": fuel,
        "fuel_limit": Limits().fuel,
    }


def table(result: dict[str, Any]) -> Table:
    t = Table(title="Provider contract check (hospital_credential, one recover call)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("cold: first check in a fresh process (compiles the module)", f"{result['cold_ms']:.0f} ms")
    t.add_row(f"warm: median of {result['warm_runs']} checks (goal ≤ 20 ms)", f"{result['warm_ms']:.1f} ms")
    t.add_row("warm p90", f"{result['warm_p90_ms']:.1f} ms")
    t.add_row("fuel used / limit", f"{result['fuel_used']:,} / {result['fuel_limit']:,}")
    return t
