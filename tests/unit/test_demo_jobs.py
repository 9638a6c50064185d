"""The researcher's DP CNN job in the demo: its model, its privacy, and the twin trained beside it."""

from __future__ import annotations

import numpy as np

from sterling.data.dataset import Dataset, Schema
from sterling.demo.jobs import DELTA, demo_cnn, job_body
from sterling.demo.retinamnist import GRADES
from sterling.demo.twin import train_twin
from sterling.privacy import accountant, persample
from sterling.privacy.dpsgd import build_module
from sterling.privacy.graph import Linear, infer_shapes, template
from sterling.privacy.verifier import ListingView, verify


def _images(rows: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(GRADES), rows).astype(np.int64)
    pixels = rng.integers(0, 256, (rows, 28, 28, 3)).astype(np.uint8)
    pixels[:, :4, :4, 0] = (labels * 60)[:, None, None]  # a corner that gives the grade away
    return Dataset(pixels, labels, Schema("image", (28, 28, 3), "uint8", GRADES, rows))


def test_the_demo_cnn_pools_to_three_by_three_before_a_small_head():
    graph = demo_cnn(classes=5)
    shapes = infer_shapes(graph, (3, 28, 28))
    assert shapes[-3] == (16, 3, 3)  # the last pooling, before flatten and the head
    head = graph.layers[-1]
    assert isinstance(head, Linear)
    assert head.out == 5
    module = build_module(graph, (3, 28, 28))
    assert module[-1].weight.numel() == 16 * 3 * 3 * 5
    assert (
        module[-1].weight.numel() < build_module(template("cnn", classes=5), (3, 28, 28))[-1].weight.numel()
    )
    assert persample.supported(module)  # per-example gradients in one batched pass, not vmap


def test_the_cnn_job_verifies_within_its_epsilon_per_run():
    pool = _images(600, seed=0)
    job = job_body("cnn", [1, 2], 3.0, "file:///validation", pool.schema, seed=0)
    assert job.model == demo_cnn(classes=5)
    views = {
        lid: ListingView(lid, pool.schema, 8.0, 30.0, DELTA, 0, 0, allowed_families=("cnn",))
        for lid in (1, 2)
    }
    report = verify(job, views)
    assert report.ok, report.violations
    s = report.summary
    assert s["training_runs"] == 2
    eps = accountant.pld_epsilon(
        accountant.DpSgdParams(s["noise_multiplier"], s["sample_rate"], s["steps"], DELTA)
    )
    assert eps <= 3.0 + 1e-6


def test_the_twin_trains_the_jobs_own_graph_and_learns_an_easy_task():
    # 256 images: the demo's narrow CNN (8 channels first) needs more than 128 to pick up the cue.
    train, validation, test = _images(256, seed=1), _images(40, seed=2), _images(60, seed=3)
    job = job_body("cnn", [1], 3.0, "file:///validation", train.schema, seed=0)
    evaluation, curve = train_twin(job, train, test, seed=0, validation=validation, batch=32)
    assert len(curve) == job.training.epochs
    assert evaluation.accuracy > 0.6  # the corner gives the grade away; chance is 0.2
