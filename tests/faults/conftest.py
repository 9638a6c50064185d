"""One market for the fault tests on anvil: chain, a worker and three listings, each a separate process.

It is started once per session (processes are what is slow here) and every process is stopped
at the end, whatever happens. The tests break it on purpose: the storage test deletes and
corrupts blobs of their own listings, the chain tests stop and restart the node on the same
port (so the worker, which keeps running, finds it again).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli_world import PROVIDERS, Procs, chain_up, publish_all, save_dataset, start_template, worker, write_job
from sterling.chain import node
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState

#: Long enough that no lease runs out while the chain is being restarted.
LEASE_SECONDS = 30
FINAL = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


def separable(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    return x, (x @ np.array([1.5, -2.0, 1.0, 0.5, -1.0, 2.0]) > 0).astype(np.int64)


@dataclass
class World:
    procs: Procs
    chain: subprocess.Popen[str]
    ready: dict[str, Any]
    worker: subprocess.Popen[str]
    worker_address: str
    listings: dict[str, int] = field(default_factory=dict)
    job: Path = Path()
    chain_name: str = "chain"

    @property
    def url(self) -> str:
        return str(self.ready["rpc_url"])

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def state(self) -> Path:
        return self.procs.tmp / "state"

    def market(self) -> Marketplace:
        return Marketplace.at(node.connect(self.url), str(self.ready["marketplace"]))

    def restart_chain(self, name: str) -> dict[str, Any]:
        """`sterling chain up` again on the same state folder and port."""
        self.chain, self.ready = chain_up(self.procs, lease_seconds=LEASE_SECONDS, port=self.port, name=name)
        self.chain_name = name
        return self.ready

    def chain_log(self) -> Path:
        """What the running `sterling chain up` wrote to stderr."""
        return self.procs.tmp / f"{self.chain_name}.log"

    def wait_final(self, job_ids: list[int], timeout: float = 120) -> None:
        m = self.market()
        deadline = time.monotonic() + timeout
        while any(m.job(j).state not in FINAL for j in job_ids):
            if time.monotonic() > deadline:
                states = {j: m.job(j).state.label for j in job_ids}
                raise AssertionError(f"jobs not final after {timeout:.0f} s: {states}")
            if self.worker.poll() is not None:
                raise AssertionError(f"the worker exited with {self.worker.returncode}")
            time.sleep(0.3)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    procs = Procs(tmp_path_factory.mktemp("faults"))
    template = None
    try:
        template = start_template(procs)  # meanwhile: it needs no chain
        chain, ready = chain_up(procs, lease_seconds=LEASE_SECONDS)
        url, state = str(ready["rpc_url"]), procs.tmp / "state"
        proc, address = worker(procs, url, state, "a")
        names = ("good", "deleted", "corrupt")
        data = [save_dataset(procs, n, *separable(300, i)) for i, n in enumerate(names)]
        ids = publish_all(procs, url, state, list(zip(data, PROVIDERS, strict=True)))
        w = World(procs, chain, ready, proc, address, dict(zip(names, ids, strict=True)))
        out, _ = template.communicate(timeout=120)
        assert template.returncode == 0, "sterling job template failed"
        w.job = write_job(procs, out, [ids[0]], steps=20, name="job")
        yield w
    finally:
        if template is not None and template.poll() is None:
            template.kill()
            template.wait()
        procs.stop_all()
