"""A whole market as a user runs it, for the browser tests: separate processes on loopback.

`sterling chain up` (anvil), a `sterling enclave run` worker, listings published with
`sterling provider publish`, and `sterling serve` in front of them; every process is stopped at
the end, whatever happens. Nothing of Sterling's is replaced: the server answers only with the
access token it printed, which the pages get as a cookie (conftest's `page` logs in) and `api`
sends as a header.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cli_world import first_json_line

STERLING = [sys.executable, "-m", "sterling.cli"]
FEATURES = 8
#: JavaScript: how many pixels of the canvas with this id are drawn (a chart that drew nothing has none).
PAINTED = """id => {
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""
WEIGHTS = np.array([1.5, -2.0, 1.0, 0.5, -1.0, 2.0, 0.8, -0.6])
PROVIDERS = ("5", "6")
CLI_CONSUMER = "3"


def tabular_csv(path: Path, rows: int, seed: int) -> Path:
    """A separable two-class table (a "label" column of benign/malignant) written as CSV."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    y = x @ WEIGHTS > 0
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([f"f{i}" for i in range(FEATURES)] + ["label"])
        for row, label in zip(x, y, strict=True):
            out.writerow([f"{v:.5f}" for v in row] + ["malignant" if label else "benign"])
    return path


@dataclass
class Listing:
    id: int
    name: str
    rows: int
    cap: float
    budget: float


@dataclass
class Market:
    tmp: Path
    rpc_url: str = ""
    state: Path = Path()
    base_url: str = ""
    token: str = ""
    listings: dict[str, Listing] = field(default_factory=dict)
    cli_job: int = 0
    running: list[subprocess.Popen[str]] = field(default_factory=list)
    worker: subprocess.Popen[str] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "STERLING_HOME": str(self.tmp / "home")}

    def start(self, *args: str, name: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [*STERLING, *args], stdout=subprocess.PIPE, stderr=log, text=True, env=self.env,
            start_new_session=True,
        )  # fmt: skip
        self.running.append(proc)
        return proc

    def first_line(self, proc: subprocess.Popen[str], name: str, timeout: float = 120) -> dict[str, Any]:
        line = first_json_line(proc, timeout)
        if line is None:
            raise AssertionError(f"{name} printed nothing: {(self.tmp / f'{name}.log').read_text()[-2000:]}")
        return line

    def run(self, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [*STERLING, *args, "--format", "json"], capture_output=True, text=True, env=self.env, timeout=180
        )
        if done.returncode != 0:
            raise AssertionError(f"sterling {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return dict(json.loads(done.stdout))

    def chain_args(self) -> list[str]:
        return ["--rpc-url", self.rpc_url, "--state", str(self.state)]

    def publish(self, specs: list[dict[str, Any]]) -> None:
        """Publishes listings with `sterling provider publish`, all at once (each from its own account)."""
        running = []
        for spec in specs:
            name = spec["name"]
            data = tabular_csv(self.tmp / f"{name.split()[-1].lower()}.csv", spec["rows"], spec["seed"])
            args = [
                "provider", "publish", str(data), *self.chain_args(), "--dev-account", spec["dev"],
                "--name", name, "--price-per-job", str(spec["price_per_job"]),
                "--price-per-epsilon", "2000000000000000", "--epsilon-budget", str(spec["budget"]),
                "--max-epsilon-per-job", str(spec["cap"]), "--delta", "1e-5", "--format", "json",
            ]  # fmt: skip
            proc = subprocess.Popen(
                [*STERLING, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
            )
            running.append((spec, proc))
        for spec, proc in running:
            out, err = proc.communicate(timeout=180)
            if proc.returncode != 0:
                raise AssertionError(f"publishing {spec['name']} exited {proc.returncode}: {err}")
            listing = Listing(int(json.loads(out)["listing_id"]), spec["name"], spec["rows"], spec["cap"],
                              spec["budget"])  # fmt: skip
            self.listings[spec["name"].split()[-1].lower()] = listing

    def job_template(self) -> subprocess.Popen[str]:
        """`sterling job template` (started early: it needs no chain), filled in by `submit_cli_job`."""
        args = [
            "job",
            "template",
            "logistic_regression",
            "--epsilon",
            "1.0",
            "--classes",
            "2",
            "--listing",
            "1",
        ]
        return subprocess.Popen([*STERLING, *args], stdout=subprocess.PIPE, text=True, env=self.env)

    def submit_cli_job(self, template: subprocess.Popen[str], listing: int, steps: int) -> int:
        """A job submitted with the CLI (not the pages), so the explorer has one whatever runs first."""
        out, _ = template.communicate(timeout=120)
        assert template.returncode == 0, "sterling job template failed"
        doc = json.loads(out)
        doc["listings"] = [{"listing_id": listing, "epsilon": 1.0}]
        doc["training"].update(
            {"steps": steps, "epochs": None, "learning_rate": 1.0, "optimizer": "momentum"}
        )
        path = self.tmp / "cli-job.json"
        path.write_text(json.dumps(doc))
        out_json = self.run("job", "submit", str(path), *self.chain_args(), "--dev-account", CLI_CONSUMER)
        return int(out_json["job_id"])

    def serve(self) -> subprocess.Popen[str]:
        return self.start("serve", *self.chain_args(), "--port", "0", "--format", "json", name="serve")

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` as JSON with the launch token, as a script driving the server would."""
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"token {self.token}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())

    def wait_idle(self, timeout: float = 120) -> None:
        """Until no job is pending or being trained (the worker then only polls)."""
        deadline = time.monotonic() + timeout
        while any(
            j["state"] in ("pending", "claimed", "training")
            for j in self.api("/api/jobs?per_page=200")["items"]
        ):
            if time.monotonic() > deadline:
                raise AssertionError("jobs still running after the timeout")
            time.sleep(0.3)

    def stop_all(self) -> None:
        for proc in reversed(self.running):  # the server and worker before the chain they talk to
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def start_market(m: Market) -> None:
    """Chain, worker, two listings (one with a small per-job ε cap), a CLI job, and the server.

    The processes started are in `m.running` as soon as they start, so `m.stop_all()` stops them
    even if a later step fails."""
    m.state = m.tmp / "state"
    # A short lease makes the worker report progress about every second (a third of the lease).
    up = m.start("chain", "up", "--state", str(m.state), "--lease-seconds", "3", name="chain")
    m.rpc_url = str(m.first_line(up, "chain")["rpc_url"])
    server = m.serve()  # it starts while the worker and the providers do their part
    template = m.job_template()
    worker = m.start(
        "enclave", "run", *m.chain_args(), "--name", "a", "--allow", "--poll", "0.2", "--format", "json",
        name="worker",
    )  # fmt: skip
    m.worker = worker
    # The clients seal only to enclaves they trust: trust this chain's own SIMULATED enclave, by name.
    m.run("enclave", "trust", "--simulated", "--state", str(m.state))
    ready = m.first_line(worker, "worker")
    assert ready["event"] == "ready"
    assert ready["simulated"] is True
    m.publish([
        {"name": "Biopsies North", "rows": 2400, "seed": 1, "dev": PROVIDERS[0],
         "price_per_job": 1_000_000_000_000_000, "cap": 2.0, "budget": 10.0},
        {"name": "Biopsies South", "rows": 1600, "seed": 2, "dev": PROVIDERS[1],
         "price_per_job": 3_000_000_000_000_000, "cap": 0.5, "budget": 4.0},
    ])  # fmt: skip
    m.cli_job = m.submit_cli_job(template, m.listings["north"].id, steps=40)
    up = m.first_line(server, "serve")
    m.base_url, m.token = str(up["url"]).rstrip("/"), str(up["token"])
