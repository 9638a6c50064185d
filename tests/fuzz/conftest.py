"""Fuzzing every parser of outside input (issue 9): the hypothesis profile, and one market for the API.

The profile is registered here and used as the parent of each test's settings (never loaded
globally, so the rest of the suite keeps its own settings). It is derandomized, so CI runs the
same examples every time; STERLING_FUZZ_SCALE=10 runs ten times as many, for a longer hunt.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))

settings.register_profile(
    "sterling-fuzz",
    deadline=None,  # examples that run the sandbox or the chain take ~0.1-1 s, and vary with the load
    max_examples=25,
    derandomize=True,
    database=None,
    print_blob=True,
)


@pytest.fixture(scope="module")
def fuzz_site() -> Iterator[object]:
    """A real market (py-evm, a simulated enclave, one listing) and the app over it, for one module.

    Module-scoped so that hypothesis examples share it: each test checks that a refused request
    leaves it as it was.
    """
    from webworld import make_world, serve, tabular

    with tempfile.TemporaryDirectory(prefix="sterling-fuzz-web-") as tmp:
        root = Path(tmp)
        world = make_world(root)
        with serve(world, root / "static", raise_server_exceptions=False) as site:
            world.list_data(tabular(200, 1), provider=0)
            yield site
        world.chain.close()
