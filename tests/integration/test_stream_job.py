"""A real job whose data is above the worker's streaming threshold: trained by row from a local copy.

Two worlds, each its own chain deployed alike, run the same job with workers of the same test
entropy: one decrypts into memory (the default threshold), one streams (a threshold of 4 KB).
Same sampling, same noise, so the same model: streaming changes where rows come from, not what
training does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from enclave_world import World, make_world, tabular

from sterling.chain.types import JobState
from sterling.crypto.entropy import SecretRandom
from sterling.enclave.worker import Worker, WorkerOptions
from sterling.sdk.consumer import fetch_result, submit_job

THRESHOLD = 4096


def _worker(world: World, *, stream_above: int | None, logs: list[str]) -> Worker:
    options = WorkerOptions(name="w1", progress_seconds=0.0)
    if stream_above is not None:
        options = WorkerOptions(name="w1", progress_seconds=0.0, stream_above=stream_above)
    # The world's enclave (same state, keys and registration), with repeatable entropy.
    return Worker.open(
        world.market,
        world.worker.tee,
        world.state / "enclave",
        world.store,
        options=options,
        log=logs.append,
        entropy=SecretRandom.for_tests(2026),
    )


def _run(tmp_path: Path, stream_above: int | None) -> tuple[World, list[str], int, object]:
    world = make_world(tmp_path)
    logs: list[str] = []
    worker = _worker(world, stream_above=stream_above, logs=logs)
    a = world.list_data(tabular(600, 1), provider=0)
    b = world.list_data(tabular(30, 2), provider=1)  # small: below the threshold, in memory
    job = world.job([a, b])
    submitted = submit_job(
        world.market, world.consumer, world.consumer_key, job, world.store, trust=world.trust
    )
    (handled,) = worker.poll()
    assert handled.state == "completed", handled.reason
    bundle = fetch_result(world.market, submitted.job_id, world.consumer_key)
    return world, logs, submitted.job_id, bundle


def test_a_job_above_the_threshold_streams_and_trains_the_in_memory_model(tmp_path):
    sizes: list[int] = []
    worlds: list[World] = []
    try:
        memory_world, memory_logs, _, memory = _run(tmp_path / "memory", None)
        worlds.append(memory_world)
        stream_world, stream_logs, job_id, streamed = _run(tmp_path / "stream", THRESHOLD)
        worlds.append(stream_world)
        for lid in stream_world.listings:
            sizes.append(len(stream_world.store.get_bytes(stream_world.market.listing(lid).data_hash)))
        assert sizes[0] > THRESHOLD >= sizes[1]  # the first listing streams, the second does not
        assert not any("streams by row" in m for m in memory_logs)
        streaming = [m for m in stream_logs if "streams by row" in m]
        assert len(streaming) == 1
        assert f"listing {stream_world.listings[0]} " in streaming[0]
        assert stream_world.market.job(job_id).state is JobState.COMPLETED
        # The same rows sampled, clipped and noised: the same model, the same ε charged.
        assert memory.info["train_rows"] == streamed.info["train_rows"]
        assert memory.info["epsilon_per_listing"] == streamed.info["epsilon_per_listing"]
        for name, value in memory.state.items():
            assert np.allclose(value, streamed.state[name], atol=1e-6), name
        test = tabular(400, 99)
        accuracy = float((streamed.predict_proba(test.features).argmax(axis=1) == test.labels).mean())
        assert accuracy > 0.8
        # The verified copy had no name in the enclave's work dir and is gone with the job.
        work = stream_world.state / "enclave" / "work"
        assert work.is_dir()
        assert not list(work.iterdir())
    finally:
        for w in worlds:
            w.chain.close()


@pytest.fixture
def world(tmp_path) -> World:
    w = make_world(tmp_path)
    yield w
    w.chain.close()


def test_a_corrupt_blob_above_the_threshold_fails_the_job_before_any_row_is_read(world):
    logs: list[str] = []
    worker = _worker(world, stream_above=THRESHOLD, logs=logs)
    a = world.list_data(tabular(600, 1))
    listing = world.market.listing(a)
    path = Path(world.store._path(listing.data_hash))
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1
    path.write_bytes(bytes(raw))
    job_id = submit_job(
        world.market, world.consumer, world.consumer_key, world.job([a]), world.store, trust=world.trust
    ).job_id
    (handled,) = worker.poll()
    assert handled.state == "failed"
    (ev,) = [e for e in world.market.job_events(job_id) if e.name == "JobFailed"]
    assert "content hash differs" in str(ev.args["reason"])
    assert world.market.balance_of(world.consumer.address) == world.market.job(job_id).escrow
    assert not list((world.state / "enclave" / "work").iterdir())
