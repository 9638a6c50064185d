"""Helpers for the API tests, over a real market: py-evm, a SimulatedTee worker, sealed data.

Nothing of Sterling's is replaced: the app's routes sign real transactions on the embedded
chain, the worker really verifies, trains with DP-SGD and settles, and the blobs are real
ciphertext in a folder of the test's own.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from enclave_world import World, make_world, tabular

from sterling.data.dataset import Dataset
from sterling.web.context import WebContext

CONSUMER = 1  # dev account indexes as the API takes them (0 is the admin)
PROVIDERS = (2, 3, 4, 5)
#: The app's launch token and its own origin in the tests (`sterling serve` draws a token per launch).
TOKEN = "test-token-0123456789abcdef"
PORT = 8000
ORIGIN = f"http://127.0.0.1:{PORT}"


@dataclass
class Site:
    world: World
    context: WebContext
    client: TestClient

    def blobs(self) -> list[Path]:
        """Every blob file in the store (to check that a refused request stored nothing)."""
        root = Path(self.world.store.root)
        return sorted(p for p in root.rglob("*") if p.is_file())

    def publish_form(self, **overrides: Any) -> dict[str, str]:
        form = {
            "name": "clinic",
            "price_per_job_wei": str(10**15),
            "price_per_epsilon_wei": str(10**15),
            "epsilon_budget": "5",
            "max_epsilon_per_job": "2",
            "delta": "0.00001",
            "account": str(PROVIDERS[0]),
        }
        form.update({k: str(v) for k, v in overrides.items()})
        return form


@contextmanager
def serve(world: World, static_dir: Path, *, raise_server_exceptions: bool = True) -> Iterator[Site]:
    """The web app over `world`'s market, in a test client; the chain is the caller's to close.

    The client talks to it as the browser does: at its own origin, logged in once with the tokened
    URL `sterling serve` prints (so it carries the access cookie from then on).
    """
    from sterling.web.app import create_app

    context = WebContext(
        trust=world.trust,
        market=world.market,
        store=world.store,
        state_dir=world.state,
        poll_seconds=0.05,
        keepalive_seconds=0.2,
    )
    app = create_app(context, static_dir=static_dir, token=TOKEN, port=PORT)
    with TestClient(app, base_url=ORIGIN, raise_server_exceptions=raise_server_exceptions) as client:
        assert client.get(f"/?token={TOKEN}").status_code == 200
        yield Site(world, context, client)


def npz_bytes(dataset: Dataset) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=dataset.features, y=dataset.labels)
    return buf.getvalue()


__all__ = [
    "CONSUMER",
    "ORIGIN",
    "PORT",
    "PROVIDERS",
    "TOKEN",
    "Site",
    "World",
    "make_world",
    "npz_bytes",
    "tabular",
]
