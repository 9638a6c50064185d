"""The enclave runtime as a user runs it: chain, workers, provider and consumer as separate processes.

`sterling chain up` runs anvil on loopback; `sterling enclave run` workers
claim and settle; the provider publishes and the consumer submits, watches
and fetches the model with the CLI. One test kills a worker in the middle of
training: another takes the job over when the lease runs out, and nothing
is paid or charged twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from enclave_world import tabular

from sterling.chain import node
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState
from sterling.privacy.bundle import ModelBundle

pytestmark = [pytest.mark.anvil, pytest.mark.slow]
STERLING = [sys.executable, "-m", "sterling.cli"]
CONSUMER, PROVIDERS = "3", ("5", "6")


class Procs:
    """Processes a test starts; all are stopped at the end, whatever happens."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[subprocess.Popen[str]] = []
        self.env = {**os.environ, "STERLING_HOME": str(tmp / "home")}

    def start(self, *args: str, name: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [*STERLING, *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        self.running.append(proc)
        return proc

    def first_line(self, proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                return dict(json.loads(line))
            if proc.poll() is not None:
                raise AssertionError(f"process exited with {proc.returncode} before printing")
        raise AssertionError("no output in time")

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*STERLING, *args], capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"sterling {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def stop_all(self) -> None:
        for proc in reversed(self.running):  # workers before the chain they talk to
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop_all()


def _chain(procs: Procs, lease_seconds: int) -> tuple[str, Path]:
    state = procs.tmp / "state"
    up = procs.start(
        "chain", "up", "--state", str(state), "--lease-seconds", str(lease_seconds), name="chain"
    )
    return str(procs.first_line(up)["rpc_url"]), state


def _worker(procs: Procs, url: str, state: Path, name: str) -> tuple[subprocess.Popen[str], str]:
    common = ["--rpc-url", url, "--state", str(state), "--store", str(procs.tmp / "blobs")]
    args = ["enclave", "run", *common, "--name", name, "--allow", "--poll", "0.2", "--format", "json"]
    proc = procs.start(*args, name=f"worker-{name}")
    ready = procs.first_line(proc, timeout=120)
    assert ready["event"] == "ready"
    assert ready["simulated"] is True
    assert "SIMULATION" in ready["mode"]
    return proc, str(ready["address"])


def _publish(procs: Procs, url: str, state: Path, rows: int, seed: int, dev: str) -> int:
    data = procs.tmp / f"data-{seed}.npz"
    ds = tabular(rows, seed)
    np.savez(data, features=ds.features, labels=ds.labels)
    out = procs.run(
        "provider", "publish", str(data), "--rpc-url", url, "--state", str(state),
        "--store", str(procs.tmp / "blobs"), "--dev-account", dev, "--format", "json",
        "--price-per-job", "1000000", "--price-per-epsilon", "2000000", "--epsilon-budget", "5",
        "--max-epsilon-per-job", "2", "--delta", "1e-5",
    )  # fmt: skip
    return int(json.loads(out.stdout)["listing_id"])


def _job_file(procs: Procs, listings: list[int], steps: int) -> Path:
    args = ["job", "template", "logistic_regression", "--epsilon", "1.0", "--classes", "2"]
    for lid in listings:
        args += ["--listing", str(lid)]
    doc = json.loads(procs.run(*args).stdout)
    doc["training"].update({"steps": steps, "epochs": None, "learning_rate": 1.0, "optimizer": "momentum"})
    path = procs.tmp / "job.json"
    path.write_text(json.dumps(doc))
    return path


def _submit(procs: Procs, url: str, state: Path, job: Path) -> int:
    common = ["--rpc-url", url, "--state", str(state), "--store", str(procs.tmp / "blobs")]
    out = procs.run("job", "submit", str(job), *common, "--dev-account", CONSUMER, "--format", "json")
    return int(json.loads(out.stdout)["job_id"])


def test_chain_worker_provider_and_consumer_as_separate_processes(procs):
    url, state = _chain(procs, lease_seconds=60)
    _worker(procs, url, state, "a")
    listings = [
        _publish(procs, url, state, 300, 1, PROVIDERS[0]),
        _publish(procs, url, state, 200, 2, PROVIDERS[1]),
    ]
    job_id = _submit(procs, url, state, _job_file(procs, listings, steps=80))

    chain_args = ["--rpc-url", url, "--state", str(state)]
    watched = procs.run("job", "watch", str(job_id), *chain_args, "--format", "json", "--timeout", "240")
    updates = [json.loads(line) for line in watched.stdout.splitlines()]
    assert updates[-1]["state"] == "completed"
    # The job may finish before watching starts; its heartbeats stay on chain either way.
    status = json.loads(procs.run("job", "status", str(job_id), *chain_args, "--format", "json").stdout)
    assert status["progress"]["step"] == status["progress"]["steps"] == 80
    assert status["state"] == "completed"

    model = procs.tmp / "model.npz"
    got = json.loads(
        procs.run(
            "job",
            "result",
            str(job_id),
            *chain_args,
            "--out",
            str(model),
            "--dev-account",
            CONSUMER,
            "--format",
            "json",
        ).stdout
    )
    assert got["steps"] == 80
    assert got["epsilon_spent"] <= 1.0
    bundle = ModelBundle.from_bytes(model.read_bytes())
    test = tabular(400, 7)
    assert float((bundle.predict_proba(test.features).argmax(1) == test.labels).mean()) > 0.85

    # Another consumer's key cannot open it.
    other = procs.run("job", "result", str(job_id), *chain_args, "--out", str(procs.tmp / "x.npz"),
                      "--dev-account", "4", check=False)  # fmt: skip
    assert other.returncode != 0
    assert "another consumer key" in other.stderr
    assert not (procs.tmp / "x.npz").exists()


def test_a_worker_killed_mid_training_is_taken_over_and_nothing_is_paid_twice(procs):
    url, state = _chain(procs, lease_seconds=4)
    worker_a, address_a = _worker(procs, url, state, "a")
    listing = _publish(procs, url, state, 400, 1, PROVIDERS[0])
    job_id = _submit(procs, url, state, _job_file(procs, [listing], steps=6000))
    market = Marketplace.at(
        node.connect(url), json.loads((state / "deployment.json").read_text())["marketplace"]
    )

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait until worker a is training (a heartbeat past step 0)
        beats = [e for e in market.job_events(job_id) if e.name == "JobProgress" and e.args["step"] > 0]
        if beats:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("worker a never reported training progress")
    assert market.job(job_id).enclave == address_a
    os.killpg(worker_a.pid, signal.SIGKILL)
    worker_a.wait()

    _, address_b = _worker(procs, url, state, "b")
    deadline = time.monotonic() + 240
    while market.job(job_id).state is not JobState.COMPLETED and time.monotonic() < deadline:
        time.sleep(0.5)
    job = market.job(job_id)
    assert job.state is JobState.COMPLETED
    assert job.enclave == address_b

    events = market.job_events(job_id)
    claims = [e.args["enclave"] for e in events if e.name == "JobClaimed"]
    assert claims == [address_a, address_b]
    assert [e.name for e in events].count("JobCompleted") == 1
    (allocation,) = job.allocations
    provider = market.listing(listing).provider
    assert market.balance_of(provider) == allocation.price  # paid once
    budget = market.listing(listing).budget
    assert budget.spent == allocation.spent <= allocation.reserved  # charged once
    assert budget.reserved == 0
    assert market.ether_balance() == market.liabilities()
