"""`sterling listings` and `sterling index` on anvil, as a user runs them: pages, totals, bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from indexworld import World, manifest

from sterling.chain.deploy import ensure_deployment
from sterling.chain.marketplace import Marketplace

pytestmark = pytest.mark.anvil
STERLING = [sys.executable, "-m", "sterling.cli"]


def test_listings_and_index_commands(anvil_world: World, tmp_path: Path, index_url: str):
    w = anvil_world
    state = tmp_path / "state"
    deployment, _ = ensure_deployment(w.chain, state, deployer=w.admin)
    w.market = Marketplace.at(w.chain, deployment.marketplace)
    for name in ("alpha", "beta", "gamma"):
        w.publish(manifest(name, "cli listing", ["a"], 3))
    env = {**os.environ, "STERLING_HOME": str(tmp_path / "home"), "STERLING_INDEX_URL": index_url}
    chain = ["--rpc-url", str(w.chain.rpc_url), "--state", str(state)]

    def run(*args: str, ok: bool = True) -> Any:
        done = subprocess.run(
            [*STERLING, *args, *chain], env=env, capture_output=True, text=True, timeout=120
        )
        assert (done.returncode == 0) == ok, done.stderr
        return json.loads(done.stdout) if ok and "json" in args else done

    page = run("listings", "--per-page", "2", "--page", "2", "--format", "json")
    assert (page["total"], page["pages"], [i["name"] for i in page["items"]]) == (3, 2, ["gamma"])
    found = run("listings", "--search", "bet", "--sort", "price", "--desc", "--format", "json")
    assert [i["name"] for i in found["items"]] == ["beta"]
    text = run("listings", "--per-page", "2")
    assert "page 1 of 2, 3 in all" in text.stdout
    refused = run("listings", "--per-page", "201", ok=False)
    assert "200" in refused.stderr
    assert "Traceback" not in refused.stderr
    status = run("index", "status", "--format", "json")
    assert (status["listings"], status["synced_block"]) == (3, w.chain.w3.eth.block_number)
    w.publish()
    synced = run("index", "sync", "--format", "json")
    assert (synced["events"], synced["listings"]) == (2, 4)  # BudgetCreated + ListingPublished
    rebuilt = run("index", "rebuild", "--format", "json")
    assert rebuilt["rebuilt"]
    assert rebuilt["events"] == len(w.market.events())
    assert rebuilt["manifests_read"] == 0  # the cache outlives a rebuild
