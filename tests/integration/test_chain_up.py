"""`sterling chain up/deploy/status` as separate processes on loopback, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sterling.chain import node
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import Terms

pytestmark = pytest.mark.anvil
STERLING = [sys.executable, "-m", "sterling.cli"]


@contextmanager
def chain_up(state: Path) -> Iterator[dict]:
    proc = subprocess.Popen(
        [*STERLING, "chain", "up", "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, proc.stderr.read()  # type: ignore[union-attr]
        yield json.loads(line)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]


def status(url: str, state: Path) -> dict:
    out = subprocess.run(
        [*STERLING, "chain", "status", "--rpc-url", url, "--state", str(state), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_chain_up_deploys_then_a_restart_keeps_everything(tmp_path):
    state = tmp_path / "state"
    with chain_up(state) as ready:
        assert set(ready) >= {"rpc_url", "chain_id", "marketplace"}
        assert ready["rpc_url"].startswith("http://127.0.0.1:")
        assert ready["reused"] is False
        first = status(ready["rpc_url"], state)
        assert first["marketplace"] == ready["marketplace"]
        assert (first["listings"], first["jobs"], first["enclaves"]) == (0, 0, 0)
        chain = node.connect(ready["rpc_url"])
        m = Marketplace.at(chain, ready["marketplace"])
        provider = chain.dev_accounts[3]
        data_hash = os.urandom(32)
        m.publish(
            provider, data_uri="file:///x", data_hash=data_hash, sealed_key=b"k" * 80,
            terms=Terms(1, 2, 1_000_000), epsilon_budget=3_000_000, delta=10**13,
        )  # fmt: skip
        listed = subprocess.run(
            [*STERLING, "chain", "events", "--rpc-url", ready["rpc_url"], "--state", str(state),
             "--name", "ListingPublished", "--format", "json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        (event,) = json.loads(listed.stdout)
        assert event["args"]["listing_id"] == 1
        assert event["args"]["data_hash"] == "0x" + data_hash.hex()
        time.sleep(1.5)  # one state save interval
    with chain_up(state) as again:
        assert again["reused"] is True
        assert again["marketplace"] == ready["marketplace"]
        after = status(again["rpc_url"], state)
        assert after["listings"] == 1
        chain = node.connect(again["rpc_url"])
        listing = Marketplace.at(chain, again["marketplace"]).listing(1)
        assert listing.data_hash == data_hash
        assert listing.budget.total == 3_000_000


def test_deploy_to_a_running_node_records_and_reuses(tmp_path, anvil_binary):
    chain = node.start_anvil(anvil_binary)
    try:
        args = [
            *STERLING,
            "chain",
            "deploy",
            "--rpc-url",
            chain.rpc_url,
            "--state",
            str(tmp_path),
            "-f",
            "json",
        ]
        first = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
        second = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
        assert first["reused"] is False
        assert second["reused"] is True
        assert first["marketplace"] == second["marketplace"]
        assert Marketplace.at(chain, first["marketplace"]).admin() == chain.dev_accounts[0].address
        recorded = json.loads((tmp_path / "deployment.json").read_text())
        assert recorded["marketplace"] == first["marketplace"]
        assert recorded["chain_id"] == chain.chain_id == 31337
    finally:
        chain.close()


def test_status_refuses_a_deployment_from_another_chain(tmp_path, anvil_binary):
    (tmp_path / "deployment.json").write_text(
        json.dumps({"chain_id": 1, "marketplace": "0x" + "11" * 20, "attestation_signer": "0x" + "22" * 20,
                    "deployer": "0x" + "33" * 20, "block": 1})
    )  # fmt: skip
    chain = node.start_anvil(anvil_binary)
    try:
        out = subprocess.run(
            [*STERLING, "chain", "status", "--rpc-url", chain.rpc_url, "--state", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2
        assert "is for chain 1" in out.stderr
        wrong = subprocess.run(
            [*STERLING, "chain", "status", "--rpc-url", chain.rpc_url, "--marketplace", "0x" + "44" * 20],
            capture_output=True,
            text=True,
        )
        assert wrong.returncode == 4
        assert "no contract at" in wrong.stderr
    finally:
        chain.close()


def test_a_restarted_chain_never_goes_back_in_time(tmp_path, anvil_binary):
    # anvil reloads blocks but not the clock's offset: a chain moved on two days (the registry's
    # delay on a development chain) came back at wall time, and the measurement it had put in
    # force was announced again, so no enclave was live and the demo's second run hung.
    chain = node.start_anvil(anvil_binary, state_dir=tmp_path)
    try:
        chain.advance_time(2 * 86400)
        moved_on = chain.now()
    finally:
        chain.close()
    again = node.start_anvil(anvil_binary, state_dir=tmp_path)
    try:
        again.fund(again.dev_accounts[1].address, 1)  # a transaction mines a block
        assert again.now() > moved_on
    finally:
        again.close()
