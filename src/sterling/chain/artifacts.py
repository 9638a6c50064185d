"""Compiled contract artefacts: built from the Vyper sources, loaded at run time.

The artefacts (ABI, bytecode) are committed in `artifacts/` so that a user
needs no compiler to talk to a chain; `tests/contracts/test_digests_match.py`
recompiles the sources and proves the committed files match them.
Rebuild with `sterling chain compile`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sterling.errors import ConfigError

CONTRACTS_DIR = Path(__file__).parent / "contracts"
ARTIFACTS_DIR = Path(__file__).parent / "artifacts"
#: The contracts that are deployed (interfaces are compiled into them).
CONTRACTS = (
    "EnclaveRegistry",
    "Marketplace",
    "PredictionFees",
    "AllowListPolicy",
    "CredentialPolicy",
    "Pools",
)
EVM_VERSION = "cancun"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    bytecode_runtime: str
    sources_sha256: str
    vyper_version: str


def sources_digest() -> str:
    """sha256 over every contract and interface source, in a fixed order."""
    h = hashlib.sha256()
    for path in sorted(CONTRACTS_DIR.glob("*.vy*")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def compile_all() -> dict[str, Artifact]:
    """Compile every deployable contract with the installed Vyper."""
    import vyper
    from vyper.cli.vyper_compile import compile_files
    from vyper.compiler.settings import Settings

    digest = sources_digest()
    out: dict[str, Artifact] = {}
    for name in CONTRACTS:
        path = CONTRACTS_DIR / f"{name}.vy"
        result = compile_files(
            [str(path)],
            ["abi", "bytecode", "bytecode_runtime"],
            paths=[str(CONTRACTS_DIR)],
            settings=Settings(evm_version=EVM_VERSION),
        )
        (compiled,) = result.values()
        out[name] = Artifact(
            name=name,
            abi=compiled["abi"],
            bytecode=compiled["bytecode"],
            bytecode_runtime=compiled["bytecode_runtime"],
            sources_sha256=digest,
            vyper_version=vyper.__version__,
        )
    return out


def write_all(artifacts: dict[str, Artifact], directory: Path = ARTIFACTS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for art in artifacts.values():
        path = directory / f"{art.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(art.__dict__, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        written.append(path)
    return written


@cache
def load(name: str) -> Artifact:
    """The committed artefact of contract `name`."""
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.exists():
        raise ConfigError(f"no compiled artefact for {name} at {path}: run `sterling chain compile`")
    data = json.loads(path.read_text())
    return Artifact(**data)
