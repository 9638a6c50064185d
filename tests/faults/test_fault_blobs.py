"""Storage faults with separate processes: a listing's ciphertext blob deleted, another's corrupted.

The worker process finds out only after the chain let it claim the job and the key manager
approved it: each job must fail on chain with a reason that names the blob, the consumer must
get the whole escrow back, the listing's ε reservation must be released (nothing charged), and
the same worker must go on to run the next, good job. The consumers submit with the CLI.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from cli_world import CONSUMER, retarget, run_all, submit_args
from sterling.chain.types import JobState, Listing
from sterling.sdk.consumer import progress
from sterling.storage.manifest import read_manifest

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


def ciphertext(listing: Listing) -> tuple[Path, str]:
    """The local file holding a listing's ciphertext, and the blob's hex address."""
    uri = str(read_manifest(listing.data_uri)["ciphertext"]["uri"])
    path = Path(urlparse(uri).path)
    assert path.is_file(), uri
    return path, path.name


#: One consumer (dev account) per job, so `sterling job submit` can run for two at once.
CONSUMERS = {"deleted": CONSUMER, "corrupt": "4", "good": "8"}


def test_a_deleted_and_a_corrupted_blob_fail_their_jobs_and_refund_and_the_worker_goes_on(world):
    m = world.market()
    consumers = {k: m.chain.dev_accounts[int(dev)].address for k, dev in CONSUMERS.items()}
    before = {k: m.balance_of(a) for k, a in consumers.items()}
    listings = {k: m.listing(world.listings[k]) for k in CONSUMERS}
    gone_path, gone_blob = ciphertext(listings["deleted"])
    bad_path, bad_blob = ciphertext(listings["corrupt"])
    gone_path.unlink()
    raw = bytearray(bad_path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit in the middle of the ciphertext
    bad_path.write_bytes(bytes(raw))

    def args(k: str) -> list[str]:
        job = retarget(world.job, [listings[k].id], f"job-{k}")
        return submit_args(world.procs, world.url, world.state, job, CONSUMERS[k])

    # The two bad jobs at once, then the good one: the worker reaches it after failing them.
    bad_jobs = run_all(world.procs, [args("deleted"), args("corrupt")])
    jobs = {"deleted": int(bad_jobs[0]["job_id"]), "corrupt": int(bad_jobs[1]["job_id"])}
    jobs["good"] = int(run_all(world.procs, [args("good")])[0]["job_id"])
    bad_ids = (jobs["deleted"], jobs["corrupt"])
    world.wait_final(list(jobs.values()))

    for name, blob in (("deleted", gone_blob), ("corrupt", bad_blob)):
        job, listing = m.job(jobs[name]), m.listing(listings[name].id)
        assert job.state is JobState.FAILED, name
        (failed,) = [e for e in m.job_events(job.id) if e.name == "JobFailed"]
        reason = str(failed.args["reason"])
        assert blob in reason, reason  # the reason names the blob,
        assert reason.index(blob) < reason.index("file://")  # before its URI, which the chain may cut
        assert f"listing {listing.id}" in reason
        assert ("no blob" if name == "deleted" else "corrupt") in reason
        assert failed.args["enclave"] == world.worker_address
        assert progress(m, job.id).reason == reason  # what `sterling job status` shows the consumer
        (refund,) = [e for e in m.job_events(job.id) if e.name == "Refund"]
        assert refund.args["amount"] == job.escrow > 0  # the whole escrow
        assert m.balance_of(consumers[name]) == before[name] + job.escrow
        assert not [e for e in m.job_events(job.id) if e.name == "Payout"]
        assert (listing.budget.reserved, listing.budget.spent) == (0, 0)  # released, nothing charged
        assert m.balance_of(listing.provider) == 0

    # The worker lived on and ran the next, good job.
    assert world.worker.poll() is None
    done = m.job(jobs["good"])
    assert done.state is JobState.COMPLETED
    assert done.enclave == world.worker_address
    completed = [e.block for e in m.job_events(done.id) if e.name == "JobCompleted"]
    failures = [e.block for j in bad_ids for e in m.job_events(j) if e.name == "JobFailed"]
    assert len(completed) == 1
    assert completed[0] > max(failures)
    (allocation,) = done.allocations
    assert 0 < allocation.spent <= allocation.reserved
    assert m.listing(listings["good"].id).budget.reserved == 0
    assert m.balance_of(consumers["good"]) == before["good"] + done.escrow - allocation.price
    assert m.ether_balance() == m.liabilities()
