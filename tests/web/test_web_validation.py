"""The researcher's own validation set: upload it, assemble a job that evaluates and appraises on it,
and see each provider's released appraisal value and the validation curve once the enclave is done."""

from __future__ import annotations

import json

import numpy as np
from webworld import CONSUMER, Site, tabular

from sterling.data.dataset import Dataset, Schema
from sterling.privacy.job import Job


def _csv(dataset: Dataset, *, classes=None) -> bytes:
    names = classes or dataset.schema.classes
    lines = [",".join([f"f{i}" for i in range(dataset.features.shape[1])] + ["label"])]
    for row, label in zip(dataset.features, dataset.labels, strict=True):
        lines.append(",".join([f"{v:.5f}" for v in row] + [names[int(label)]]))
    return ("\n".join(lines) + "\n").encode()


def _upload(site: Site, content: bytes, ids, filename="validation.csv", **extra):
    return site.client.post(
        "/api/validation",
        data={"listing_ids": ",".join(map(str, ids)), **extra},
        files={"file": (filename, content)},
    )


def test_a_validation_set_matching_the_listings_is_stored_and_described(site: Site, listed):
    before = site.blobs()
    valid = tabular(120, 9)
    r = _upload(site, _csv(valid), listed)
    assert r.status_code == 201, r.json()
    body = r.json()
    assert (body["rows"], body["classes"]) == (120, ["healthy", "sick"])
    assert body["class_counts"] == [int((valid.labels == 0).sum()), int((valid.labels == 1).sum())]
    assert body["listing_ids"] == sorted(listed)
    assert len(site.blobs()) == len(before) + 1
    digest = body["validation_uri"].rsplit("/", 1)[-1]
    stored = Dataset.from_bytes(site.world.store.get_bytes(digest))
    assert np.allclose(stored.features, valid.features, atol=1e-5)
    assert (stored.labels == valid.labels).all()


def test_a_validation_set_unlike_the_listings_is_refused_and_nothing_is_stored(site: Site, listed):
    before = site.blobs()
    narrow = Dataset(
        tabular(60, 3).features[:, :4],
        tabular(60, 3).labels,
        Schema("tabular", (4,), "float32", ("healthy", "sick"), 60),
    )
    r = _upload(site, _csv(narrow), listed)
    assert r.status_code == 400
    assert r.json()["field"] == "file"
    assert "[4]" in r.json()["error"]
    assert "[6]" in r.json()["error"]

    r = _upload(site, _csv(tabular(60, 4), classes=("well", "ill")), listed)
    assert r.status_code == 400
    assert "classes ['ill', 'well']" in r.json()["error"] or "classes ['well', 'ill']" in r.json()["error"]

    one_class = tabular(80, 5)
    keep = one_class.labels == 1
    only_sick = Dataset(
        one_class.features[keep],
        one_class.labels[keep],
        Schema("tabular", (6,), "float32", ("healthy", "sick"), int(keep.sum())),
    )
    r = _upload(site, _csv(only_sick), listed)
    assert r.status_code == 400
    assert "every class" in r.json()["error"]

    r = _upload(site, b"f0,f1\n1,2\n", listed)
    assert r.status_code == 400
    assert "no label column 'label'" in r.json()["error"]
    r = _upload(site, _csv(tabular(60, 4)), listed, filename="validation.txt")
    assert r.status_code == 400
    assert "unknown dataset format .txt" in r.json()["error"]
    assert site.blobs() == before


def test_validation_requests_that_are_not_a_file_or_name_no_listing_are_refused(site: Site, listed):
    text_field = {"file": (None, b"f0,label\n1,sick\n")}  # a text part named file, not an uploaded file
    r = site.client.post("/api/validation", data={"listing_ids": str(listed[0])}, files=text_field)
    assert r.status_code == 400
    assert r.json() == {"error": "file must be an uploaded dataset file", "field": "file"}
    r = _upload(site, _csv(tabular(60, 4)), [99])
    assert (r.status_code, r.json()["field"]) == (400, "listing_ids")
    assert "no listing 99" in r.json()["error"]
    r = _upload(site, _csv(tabular(60, 4)), listed, account="1")
    assert (r.status_code, r.json()["field"]) == (400, "account")
    r = site.client.post("/api/validation", json={"listing_ids": "1"})
    assert r.status_code == 400
    assert "multipart/form-data" in r.json()["error"]


def test_an_oversize_validation_set_is_413_and_stores_nothing(site: Site, listed):
    site.context.max_upload_bytes = 64 * 1024
    before = site.blobs()
    r = _upload(site, _csv(tabular(4000, 1)), listed)  # ~ 250 KB
    assert r.status_code == 413
    assert r.json()["field"] == "file"
    assert site.blobs() == before


def test_a_job_assembled_with_a_validation_set_appraises_each_provider(site: Site, listed):
    a, b = listed
    uri = _upload(site, _csv(tabular(200, 9)), listed).json()["validation_uri"]
    r = site.client.post(
        "/api/assemble",
        json={
            "listing_ids": [a, b],
            "family": "logistic_regression",
            "account": CONSUMER,
            "validation_uri": uri,
        },
    )
    assert r.status_code == 200, r.json()
    out = r.json()
    assert out["report"]["ok"] is True, out["report"]["violations"]
    job = Job.parse(json.loads(out["text"]))
    ev, rel = job.evaluation, job.release
    assert (ev.validation_uri, ev.holdout_fraction, ev.metrics_epsilon) == (uri, 0.0, 0.0)
    assert set(ev.metrics) == {"accuracy", "auc"}
    assert ev.checkpoint == "best_accuracy"
    assert rel.appraisal_values is True
    eps = job.listings[0].epsilon
    assert eps == 1.5  # b's cap
    assert 0 < rel.appraisal_epsilon <= 0.1 * (eps - rel.appraisal_epsilon) + 1e-6
    assert out["report"]["summary"]["epsilon_appraisal"] == rel.appraisal_epsilon
    for lid, spent in out["report"]["summary"]["epsilon_per_listing"].items():
        assert spent <= eps, lid

    sub = site.client.post("/api/jobs", json={"text": out["text"], "account": CONSUMER})
    assert sub.status_code == 201, sub.json()
    (handled,) = site.world.worker.poll()
    assert handled.state == "completed", handled.reason
    page = site.client.get(f"/api/jobs/{sub.json()['job_id']}").json()
    result = page["result"]
    assert result["metrics_private"] is False
    assert 0.5 < result["metrics"]["accuracy"] <= 1.0
    assert 0.5 < result["metrics"]["auc"] <= 1.0
    appraisal = result["appraisal"]
    assert appraisal["method"] != "row_share"
    assert set(appraisal["values"]) == {str(a), str(b)}
    assert all(isinstance(v, float) for v in appraisal["values"].values())
    checkpoint = result["checkpoint"]
    assert checkpoint["rule"] == "best_accuracy"
    steps = [p["step"] for p in checkpoint["curve"]]
    assert steps == sorted(steps)
    assert len(steps) >= 2
    assert checkpoint["selected_step"] in steps
    assert all(0 <= p["accuracy"] <= 1 for p in checkpoint["curve"])
    r = site.client.post(f"/api/jobs/{sub.json()['job_id']}/cancel", json={"account": CONSUMER})
    assert r.status_code == 409
    assert "is completed: only a pending job can be cancelled" in r.json()["error"]


def test_assemble_refuses_a_validation_uri_not_uploaded_here_or_unlike_the_listings(site: Site, listed):
    body = {"listing_ids": list(listed), "family": "mlp", "account": CONSUMER}
    r = site.client.post("/api/assemble", json={**body, "validation_uri": "file:///etc/passwd"})
    assert (r.status_code, r.json()["field"]) == (400, "validation_uri")
    assert "upload it first" in r.json()["error"]
    other = site.world.list_data(tabular(200, 8), provider=2)
    narrow = site.world.store.put_bytes(
        Dataset(
            tabular(40, 3).features[:, :3],
            tabular(40, 3).labels,
            Schema("tabular", (3,), "float32", ("healthy", "sick"), 40),
        ).to_bytes()
    )
    r = site.client.post("/api/assemble", json={**body, "listing_ids": [other], "validation_uri": narrow.uri})
    assert (r.status_code, r.json()["field"]) == (400, "validation_uri")
    assert "[3]" in r.json()["error"]
