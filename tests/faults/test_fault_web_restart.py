"""The web server killed and restarted while a job page is open in the browser.

Chain (`sterling chain up`) and server (`sterling serve`) are separate processes; the listing
and the job are made with the SDK in this process (what is under test is the page). While the
server is down the page must say it lost the connection and is reconnecting; meanwhile the
job's buyer cancels it on chain directly. Once `sterling serve` is back on the same port the
page must recover by itself, without a reload: live updates resume, it shows the job
cancelled, the header shows the chain's current block, and the explorer lists the change.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from playwright.sync_api import Page, expect

from cli_world import Procs, chain_up
from sterling.chain import node
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState

pytestmark = [pytest.mark.browser, pytest.mark.anvil, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
#: Both launches take this token (`--token`), so the page's cookie from the first still opens the second.
TOKEN = "restart-test-token-0123456789"


@pytest.fixture(autouse=True)
def pages_built() -> None:
    if not (ROOT / "src/sterling/web/static/dist/app.js").exists():
        pytest.fail("the pages are not built: run `node web/build.mjs` (make does)")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop_all()


def pending_job(procs: Procs, url: str, marketplace: str) -> tuple[Marketplace, int]:
    """A registered (simulated) enclave, one listing and one job waiting for a worker, via the SDK."""
    from sterling.data.dataset import Dataset, Schema
    from sterling.enclave.tee import SimulatedTee
    from sterling.enclave.worker import Worker
    from sterling.privacy.graph import template
    from sterling.privacy.job import Job
    from sterling.sdk.consumer import submit_job
    from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset
    from sterling.sdk.trust import Trust
    from sterling.storage.blobs import BlobStore

    market = Marketplace.at(node.connect(url), marketplace)
    accounts = market.chain.dev_accounts
    store = BlobStore(procs.store)
    state = procs.tmp / "state"  # the simulated platform key `sterling chain up` trusts lives here
    tee = SimulatedTee(state)
    Worker.open(market, tee, state / "enclave", store).register(admin=accounts[0])
    trust = Trust.of(tee.measurement(), tee.platform_key.address, simulated=True)  # the chain's own
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    data = Dataset(x, (x.sum(1) > 0).astype(np.int64), Schema("tabular", (4,), "float32", ("no", "yes"), 200))
    terms = ListingTerms(10**15, 10**15, 5.0, 2.0, 1e-5)
    listing = publish(
        market,
        accounts[5],
        seal_dataset(data, store, name="Clinic"),
        terms,
        enclave=choose_enclave(market, trust=trust),
    ).listing_id
    doc: dict[str, Any] = {
        "name": "restart test",
        "listings": [{"listing_id": listing, "epsilon": 1.0}],
        "model": template("logistic_regression", classes=2).model_dump(mode="json"),
        "training": {"steps": 20, "expected_batch_size": 32, "target_epsilon": 0.8, "learning_rate": 0.5},
        "evaluation": {"holdout_fraction": 0.2, "metrics": ["accuracy"], "metrics_epsilon": 0.1},
        "payment_cap_wei": 10**18,
    }
    job = submit_job(market, accounts[3], X25519PrivateKey.generate(), Job.parse(doc), store, trust=trust)
    return market, job.job_id


def serve(procs: Procs, url: str, port: int, name: str) -> tuple[Any, str]:
    state, store = str(procs.tmp / "state"), str(procs.store)
    proc = procs.start(
        "serve", "--rpc-url", url, "--state", state, "--store", store, "--port", str(port),
        "--token", TOKEN, "--format", "json", name=name,
    )  # fmt: skip
    return proc, str(procs.first_line(proc, timeout=120)["url"]).rstrip("/")


def test_a_job_page_says_it_lost_the_server_and_recovers_when_it_is_back(procs, browser):
    _, ready = chain_up(procs, lease_seconds=30)
    market, job_id = pending_job(procs, str(ready["rpc_url"]), str(ready["marketplace"]))
    server, base = serve(procs, str(ready["rpc_url"]), 0, "serve")
    port = int(base.rsplit(":", 1)[1])

    context = browser.new_context(base_url=base)
    context.set_default_timeout(30_000)
    page: Page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"/?token={TOKEN}#/jobs/{job_id}")  # the printed URL; the redirect keeps the #
        expect(page.locator("#job-state")).to_have_attribute("data-state", "pending", timeout=30_000)
        expect(page.locator("#chain-status")).to_contain_text("Chain 31337")
        page.evaluate("window.sameDocument = true")  # gone if the page reloads

        procs.stop(server, signal.SIGKILL)
        live, header = page.locator("#live-status"), page.locator("#chain-status")
        expect(live).to_contain_text("Lost the connection to the server; reconnecting", timeout=20_000)
        expect(header).to_contain_text("reconnecting", timeout=20_000)
        expect(header).to_have_class("chain-status offline")

        market.cancel_job(market.chain.dev_accounts[3], job_id)  # the chain goes on without the server
        assert market.job(job_id).state is JobState.CANCELLED
        block = int(market.chain.w3.eth.block_number)

        serve(procs, str(ready["rpc_url"]), port, "serve-again")
        expect(page.locator("#job-state")).to_have_attribute("data-state", "cancelled", timeout=45_000)
        expect(live).to_be_empty()
        expect(header).not_to_contain_text("reconnecting")
        expect(header).to_contain_text(f"Block {block:,}")
        expect(page.locator("#job-events")).to_contain_text("JobCancelled")
        assert page.evaluate("window.sameDocument") is True

        page.evaluate("location.hash = '#/explorer'")  # still the same document
        row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
        expect(row).to_contain_text("cancelled")
        assert page.evaluate("window.sameDocument") is True
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
