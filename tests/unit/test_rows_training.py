"""DP-SGD and the enclave's Training over rows streamed from a sealed container, against in memory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sterling.crypto import container
from sterling.crypto.entropy import SecretRandom
from sterling.data.dataset import Dataset, Schema
from sterling.data.rows import PooledRows, SealedRows
from sterling.enclave.split import ModelRows
from sterling.enclave.training import Training
from sterling.errors import UsageError
from sterling.privacy.dpsgd import DPSGD
from sterling.privacy.features import to_model_input
from sterling.privacy.graph import input_shape, template
from sterling.privacy.job import Job
from sterling.privacy.verifier import ListingView, verify

SHAPE = (8, 8, 3)
DELTA = 1e-5


def _images(rows: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows).astype(np.int64)
    x = rng.integers(0, 120, (rows, *SHAPE)).astype(np.uint8)
    x[:, :4, :, 0] += (y[:, None, None] * 60).astype(np.uint8)  # a learnable signal
    return Dataset(x, y, Schema("image", SHAPE, "uint8", ("a", "b", "c"), rows))


def _streamed(data: Dataset, key: bytes) -> SealedRows:
    blob = container.encrypt_bytes(data.to_bytes(), key, chunk_size=1024)
    return SealedRows(io.BytesIO(blob), key, cache_chunks=2)


def _engine(family: str, seed: int, **kw: object) -> DPSGD:
    return DPSGD(
        template(family, classes=3),
        input_shape(SHAPE, "image"),
        clipping_norm=1.0,
        noise_multiplier=1.1,
        sample_rate=0.1,
        steps=6,
        learning_rate=0.5,
        optimizer="momentum",
        seed=1,
        rng=SecretRandom.for_tests(seed),
        device="cpu",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("family", ["logistic_regression", "mlp", "cnn"])
def test_a_streamed_run_takes_the_in_memory_engines_steps(family):
    data = _images(300, 1)
    in_shape = input_shape(SHAPE, "image")
    memory, streamed = _engine(family, 7), _engine(family, 7)
    a = memory.fit(to_model_input(data.features, in_shape), torch.from_numpy(data.labels))
    rows = ModelRows(PooledRows([_streamed(data, os.urandom(32))]), np.arange(300), in_shape)
    b = streamed.fit_rows(rows)
    assert [s.batch_size for s in a.log] == [s.batch_size for s in b.log]
    assert all(s.batch_size > 0 for s in a.log)
    for p, q in zip(memory.model.parameters(), streamed.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    # Another secret stream samples other rows: the agreement is not by construction.
    other = _engine(family, 8)
    other.fit_rows(rows)
    assert not torch.allclose(next(other.model.parameters()), next(memory.model.parameters()))


def test_oblivious_training_refuses_streamed_rows():
    data = _images(50, 2)
    rows = ModelRows(PooledRows([_streamed(data, os.urandom(32))]), np.arange(50), (3, 8, 8))
    with pytest.raises(UsageError, match="oblivious"):
        _engine("mlp", 1, oblivious=True).fit_rows(rows)


def _job(ids: list[int], evaluation: dict | None = None, **release: object) -> Job:
    evaluation = evaluation or {
        "holdout_fraction": 0.25,
        "metrics": ["accuracy", "loss"],
        "metrics_epsilon": 0.5,
    }
    return Job.parse(
        {
            "listings": [{"listing_id": lid, "epsilon": 4.0} for lid in ids],
            "model": template("mlp", classes=3).model_dump(mode="json"),
            "training": {
                "steps": 8,
                "expected_batch_size": 30,
                "target_epsilon": 2.0,
                "learning_rate": 0.5,
                "delta": DELTA,
                "seed": 3,
            },
            "evaluation": evaluation,
            "release": release,
            "payment_cap_wei": 10**18,
        }
    )


def _training(job: Job, datasets: list, ids: list[int], validation: Dataset | None = None) -> Training:
    views = {
        lid: ListingView(lid, d.schema, 8.0, 20.0, DELTA, 0, 0) for lid, d in zip(ids, datasets, strict=True)
    }
    report = verify(job, views)
    assert report.ok, report.violations
    assert report.plan is not None
    return Training(
        job, report.plan, datasets, listing_ids=ids, rng=SecretRandom.for_tests(11), validation=validation
    )


def test_a_job_on_streamed_listings_releases_what_the_in_memory_job_releases():
    a, b = _images(240, 3), _images(160, 4)
    ids = [1, 2]
    memory = _training(_job(ids), [a, b], ids).run()
    streamed_training = _training(_job(ids), [_streamed(a, os.urandom(32)), b], ids)
    assert streamed_training.data.stream is not None
    assert len(streamed_training.data.x_train) == 0
    streamed = streamed_training.run()
    assert memory.info["train_rows"] == streamed.info["train_rows"] == 300
    assert memory.epsilon_per_listing == streamed.epsilon_per_listing
    assert set(memory.metrics) == {"accuracy", "loss"}
    assert memory.metrics == pytest.approx(streamed.metrics, abs=1e-6)
    for name, value in memory.bundle.state.items():
        assert np.allclose(value, streamed.bundle.state[name], atol=1e-6), name


def test_appraisal_releases_on_streamed_data_are_refused_before_anything_runs():
    a = _images(200, 5)
    mine = {"holdout_fraction": 0.0, "validation_uri": "file:///mine", "metrics": ["accuracy"]}
    job = _job([1], mine, appraisal_values=True, appraisal_epsilon=1.0)
    _training(job, [a], [1], _images(60, 9))  # in memory the same job runs
    with pytest.raises(UsageError, match=r"appraisal\.values"):
        _training(job, [_streamed(a, os.urandom(32))], [1], _images(60, 9))


_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    from sterling.crypto import container
    from sterling.data.dataset import Dataset
    from sterling.data.rows import PooledRows, SealedRows
    from sterling.enclave.split import ModelRows

    def hwm():  # this process's peak RSS in KiB (ru_maxrss would include the parent's, from before exec)
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1])

    path, key, mode = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
    if mode == "stream":
        rows = SealedRows.open(path, key, cache_chunks=4)
        model_rows = ModelRows(PooledRows([rows]), np.arange(len(rows)), (3, 28, 28))
        quarter, total = len(rows) // 4, 0.0
        for start in range(0, quarter, 256):
            total += float(model_rows.take(torch.arange(start, min(start + 256, quarter)))[0].sum())
        # After a quarter of the file: what batches cost (the allocator's plateau) is behind us; a
        # reader that kept what it read would grow by the other three quarters from here.
        base = hwm()
        for start in range(quarter, len(rows), 256):
            x, _ = model_rows.take(torch.arange(start, min(start + 256, len(rows))))
            total += float(x.sum())
        assert rows.reader.decrypted >= rows.reader.chunks
    else:
        base = hwm()
        data = Dataset.from_bytes(container.decrypt_bytes(path.read_bytes(), key))
        total = float(data.features.sum())
    peak = hwm()
    print(json.dumps({"base_kib": base, "peak_kib": peak}))
    """
)


def test_a_streamed_pass_over_a_file_far_larger_than_its_cache_keeps_memory_bounded(tmp_path):
    rows = 40_000  # 94 MB of pixels; the streamed reader holds 4 chunks of 64 KiB
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (rows, 28, 28, 3), dtype=np.uint8)
    data = Dataset(
        x, rng.integers(0, 2, rows).astype(np.int64), Schema("image", (28, 28, 3), "uint8", ("n", "y"), rows)
    )
    key = os.urandom(32)
    path = tmp_path / "big.sealed"
    path.write_bytes(container.encrypt_bytes(data.to_bytes(), key, chunk_size=1 << 16))
    del x, data

    def child(mode: str) -> dict[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), key.hex(), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)

    streamed, whole = child("stream"), child("memory")
    data_kib = rows * 28 * 28 * 3 // 1024
    grown = streamed["peak_kib"] - streamed["base_kib"]
    assert grown < data_kib * 3 / 4 / 3, (streamed, data_kib)  # a third of what it read after base
    assert whole["peak_kib"] - whole["base_kib"] > data_kib  # the in-memory path does hold it all
