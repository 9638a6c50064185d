"""`sterling pool` as people run it, against anvil with a real (simulated) enclave registered.

Create a pool, join it with one row each (sealed to the trusted enclave), see its status, leave;
every refusal is one error line and a non-zero exit, with no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from enclave_world import tabular

from cli_world import Procs, chain, save_dataset, worker

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


class PoolCli:
    def __init__(self, procs: Procs, url: str, state: Path) -> None:
        self.procs, self.url, self.state = procs, url, state

    def args(self) -> list[str]:
        return ["--rpc-url", self.url, "--state", str(self.state)]

    def run(self, *args: str) -> Any:
        out = self.procs.run("pool", *args, *self.args(), "--format", "json")
        return json.loads(out.stdout)

    def refused(self, words: str, *args: str) -> None:
        out = self.procs.run("pool", *args, *self.args(), check=False)
        assert "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith("error: ")
        assert words in lines[0], lines[0]
        assert out.returncode != 0


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolCli]:
    procs = Procs(tmp_path_factory.mktemp("pool"))
    try:
        url, state = chain(procs, lease_seconds=60)
        worker(procs, url, state, "a")
        yield PoolCli(procs, url, state)
    finally:
        procs.stop_all()


def test_create_join_status_leave_and_refusals(cli: PoolCli) -> None:
    created = cli.run(
        "create", "--classes", "0,1", "--shape", "6", "--price-per-job", "1000",
        "--price-per-epsilon", "2000", "--epsilon-budget", "5", "--max-epsilon-per-job", "2",
        "--delta", "1e-5", "--name", "a pool", "--store", str(cli.procs.store), "--dev-account", "5",
    )  # fmt: skip
    lid = str(created["listing_id"])
    data = tabular(4, 3)
    rows = save_dataset(cli.procs, "rows", data.features, data.labels)
    for i, dev in enumerate(("6", "7")):
        joined = cli.run(
            "join", lid, str(rows), "--row", str(i), "--cap", "1.5", "--store", str(cli.procs.store),
            "--dev-account", dev,
        )  # fmt: skip
        assert joined["index"] == i
        assert joined["sealed_to"]["simulated"] is True
    status = cli.run("status", lid, "--account", joined_account(cli, "7"))
    assert (status["members"], status["admitted"], status["open"]) == (2, 2, True)
    assert status["member"]["index"] == 1
    assert status["member"]["cap_micro"] == 1_500_000
    assert cli.run("leave", lid, "--dev-account", "7")["left"] is True
    assert cli.run("status", lid)["admitted"] == 1

    store = ["--store", str(cli.procs.store)]
    cli.refused(
        "already a member", "join", lid, str(rows), "--row", "0", "--cap", "1", *store, "--dev-account", "6"
    )
    cli.refused("one row", "join", lid, str(rows), "--cap", "1", *store, "--dev-account", "8")
    cli.refused("--row 9", "join", lid, str(rows), "--row", "9", "--cap", "1", *store, "--dev-account", "8")
    cli.refused(
        "at most the pool's budget",
        "join",
        lid,
        str(rows),
        "--row",
        "2",
        "--cap",
        "6",
        *store,
        "--dev-account",
        "8",
    )
    cli.refused("pools: already left", "leave", lid, "--dev-account", "7")
    cli.refused("is not a member", "leave", lid, "--dev-account", "8")
    cli.refused("no payouts were committed", "claim", "1", lid, "--dev-account", "6")
    cli.refused("credits nothing", "withdraw", "--dev-account", "6")
    cli.refused("not a pool", "status", "99")
    cli.refused("--pools is not an address", "status", lid, "--pools", "0x12")


def joined_account(cli: PoolCli, dev: str) -> str:
    out = cli.procs.run("account", "balance", "--dev-account", dev, *cli.args(), "--format", "json")
    return str(json.loads(out.stdout)["address"])
