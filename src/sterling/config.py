"""The one place that reads settings from the environment.

Library code takes explicit arguments; only the CLI (and the demo) call
`Settings.from_env()` to fill in defaults.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sterling.errors import ConfigError

#: The project root when Sterling runs from a checkout (editable install).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sterling"


def _find_anvil() -> Path | None:
    local = PROJECT_ROOT / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return local
    found = shutil.which("anvil")
    return Path(found) if found else None


#: The enclave's default for `Settings.stream_above` (env STERLING_STREAM_ABOVE): 256 MiB.
DEFAULT_STREAM_ABOVE = 256 << 20


def _stream_above(raw: str | None) -> int:
    if not raw:
        return DEFAULT_STREAM_ABOVE
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"STERLING_STREAM_ABOVE must be a number of bytes, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"STERLING_STREAM_ABOVE must be at least 0 bytes, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Where Sterling keeps its state and finds its tools."""

    home: Path
    anvil: Path | None
    rpc_url: str | None = None
    passphrase: str | None = None
    #: Ciphertexts larger than this many bytes are streamed from disk by row, not decrypted into memory.
    stream_above: int = DEFAULT_STREAM_ABOVE

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def store_url(self) -> str:
        return str(self.home / "blobs")

    @property
    def chain_state(self) -> Path:
        return self.home / "chain"

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("STERLING_HOME") or _default_home()).expanduser()
        anvil_env = os.environ.get("STERLING_ANVIL")
        anvil = Path(anvil_env) if anvil_env else _find_anvil()
        if anvil_env and not Path(anvil_env).exists():
            raise ConfigError(f"STERLING_ANVIL points to {anvil_env}, which does not exist")
        return cls(
            home=home,
            anvil=anvil,
            rpc_url=os.environ.get("STERLING_RPC_URL") or None,
            passphrase=os.environ.get("STERLING_PASSPHRASE") or None,
            stream_above=_stream_above(os.environ.get("STERLING_STREAM_ABOVE")),
        )

    def require_anvil(self) -> Path:
        if self.anvil is None:
            raise ConfigError(
                "anvil not found: run `make setup` (installs @foundry-rs/anvil into node_modules) "
                "or set STERLING_ANVIL to its path"
            )
        return self.anvil
