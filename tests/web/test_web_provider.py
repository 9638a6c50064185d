"""Publishing through the API: a good upload lists; a bad file, terms or contract stores nothing."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image
from webworld import PROVIDERS, Site, npz_bytes, tabular

from sterling.enclave.contracts import example

PNG = b"\x89PNG\r\n\x1a\n"


def _publish(site: Site, content: bytes, filename="clinic.npz", **fields):
    return site.client.post(
        "/api/provider/publish", data=site.publish_form(**fields), files={"file": (filename, content)}
    )


def _image_zip(classes=("mild", "severe"), per_class=6, size=(12, 12), *, top="fundus") -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in classes:
            for i in range(per_class):
                img = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(img, format="PNG")
                z.writestr(f"{top}/{name}/{i}.png", img.getvalue())
    return buf.getvalue()


def test_check_contract_accepts_an_example_and_lists_every_problem(site: Site):
    r = site.client.post("/api/provider/check-contract", json={"source": example("logreg_only")})
    assert r.json() == {"ok": True, "problems": []}
    bad = "import os\n\ndef check(request):\n    return open('x')\n"
    problems = site.client.post("/api/provider/check-contract", json={"source": bad}).json()["problems"]
    assert len(problems) == 2
    assert "line 1: imports os" in problems[0]
    assert "uses open" in problems[1]
    r = site.client.post("/api/provider/check-contract", json={"source": "def check(r):\n  return (\n"})
    assert r.json()["ok"] is False
    assert r.json()["problems"][0].startswith("syntax: line")
    r = site.client.post("/api/provider/check-contract", json={"source": "X = 1\n"})
    assert r.json()["problems"] == ["the contract defines no top-level function check(request)"]
    r = site.client.post(
        "/api/provider/check-contract", json={"source": "def check(r):\n    return True\n1 / 0\n"}
    )
    assert r.json()["ok"] is False
    assert "ZeroDivisionError" in r.json()["problems"][0]
    assert site.client.post("/api/provider/check-contract", json={"code": "x"}).json()["field"] == "source"


def test_publish_a_table_with_a_preview_and_terms(site: Site):
    data = tabular(150, 11)
    r = _publish(
        site,
        npz_bytes(data),
        name="clinic A",
        allowed_families="logistic_regression, mlp",
        publish_preview="true",
        publish_class_counts="true",
        contract=example("logreg_only"),
    )
    assert r.status_code == 201, r.json()
    out = r.json()
    assert (out["rows"], out["modality"]) == (150, "tabular")
    listing = site.world.market.listing(out["listing_id"])
    assert listing.provider == site.world.chain.dev_accounts[PROVIDERS[0]].address
    assert out["data_hash"] == "0x" + listing.data_hash.hex()
    assert out["manifest_uri"] == listing.data_uri
    doc = site.client.get(f"/api/listings/{out['listing_id']}").json()
    assert doc["name"] == "clinic A"
    assert doc["preview"] is True
    assert doc["terms"]["allowed_families"] == ["logistic_regression", "mlp"]
    assert doc["terms"]["max_epsilon_per_job"] == 2.0
    assert doc["budget"]["epsilon_total"] == 5.0
    assert doc["contract_source"] == example("logreg_only")
    assert sum(doc["class_counts"]) == 150
    png = site.client.get(f"/api/listings/{out['listing_id']}/preview.png")
    assert png.status_code == 200
    assert png.content.startswith(PNG)


def test_publish_a_zip_of_class_folders_of_images(site: Site):
    r = _publish(site, _image_zip(), filename="fundus.zip")
    assert r.status_code == 201, r.json()
    doc = site.client.get(f"/api/listings/{r.json()['listing_id']}").json()
    assert (doc["modality"], doc["rows"], doc["input_shape"], doc["classes"]) == (
        "image", 12, [12, 12, 3], ["mild", "severe"]
    )  # fmt: skip
    assert doc["preview"] is False
    assert doc["class_counts"] is None


@pytest.mark.parametrize(
    ("content", "filename", "fields", "field", "words"),
    [
        (b"not a zip at all", "data.npz", {}, "file", "not a readable .npz"),
        (b"a,b\n1,2\n", "data.csv", {}, "file", "no label column 'label'"),
        (b"x", "data.xlsx", {}, "file", "unknown dataset format .xlsx"),
        (None, "data.npz", {"max_epsilon_per_job": "9"}, "max_epsilon_per_job", "exceeds the budget"),
        (None, "data.npz", {"delta": "2"}, "delta", "delta must be in (0, 1)"),
        (None, "data.npz", {"epsilon_budget": "0"}, "epsilon_budget", "epsilon budget must be > 0"),
        (None, "data.npz", {"price_per_job_wei": "-5"}, "price_per_job_wei", "whole number of wei"),
        (None, "data.npz", {"epsilon_budget": "lots"}, "epsilon_budget", "must be a number"),
        (None, "data.npz", {"allowed_families": "forest"}, "allowed_families", "unknown forest"),
        (
            None,
            "data.npz",
            {"contract": "import os\ndef check(r):\n    return True\n"},
            "contract",
            "imports os",
        ),
        (None, "data.npz", {"account": "42"}, "account", "from 0 to 9"),
        (None, "data.npz", {"account": "me"}, "account", "dev account index"),
        (None, "data.npz", {"publish_preview": "perhaps"}, "publish_preview", '"true" or "false"'),
        (None, "data.npz", {"colour": "red"}, "colour", "unknown form field colour"),
    ],
)
def test_bad_uploads_and_terms_are_refused_and_store_nothing(
    site: Site, content, filename, fields, field, words
):
    before = site.blobs()
    r = _publish(
        site, content if content is not None else npz_bytes(tabular(50, 1)), filename=filename, **fields
    )
    assert r.status_code == 400, r.json()
    assert r.json()["field"] == field, r.json()
    assert words in r.json()["error"], r.json()
    assert site.world.market.listing_count() == 0
    assert site.blobs() == before


def test_a_zip_that_escapes_its_folder_is_refused(site: Site):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil/0.png", b"x")
    r = _publish(site, buf.getvalue(), filename="x.zip")
    assert r.status_code == 400
    assert "points outside the archive" in r.json()["error"]
    assert site.world.market.listing_count() == 0


def test_missing_fields_and_missing_file(site: Site):
    form = site.publish_form()
    del form["delta"]
    r = site.client.post(
        "/api/provider/publish", data=form, files={"file": ("a.npz", npz_bytes(tabular(50, 1)))}
    )
    assert r.status_code == 400
    assert r.json() == {"error": "the form has no delta", "field": "delta"}
    r = site.client.post("/api/provider/publish", data=site.publish_form(), files={"other": ("a.npz", b"x")})
    assert r.status_code == 400
    assert r.json()["field"] in ("other", "file")


def test_oversize_upload_is_413_and_stores_nothing(site: Site):
    site.context.max_upload_bytes = 64 * 1024
    before = site.blobs()
    r = _publish(site, npz_bytes(tabular(4000, 1)))  # ~ 200 KB
    assert r.status_code == 413
    assert r.json()["field"] == "file"
    assert "limit" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.npz"\r\n\r\n'
        for _ in range(100):
            yield b"0" * 4096

    r = site.client.post(
        "/api/provider/publish", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413
    assert site.blobs() == before
    assert site.world.market.listing_count() == 0


def test_malformed_multipart_and_wrong_content_type(site: Site):
    r = site.client.post(
        "/api/provider/publish",
        content=b"--zz\r\nthis is no header\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    assert r.status_code == 400, r.json()
    r = site.client.post(
        "/api/provider/publish", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert r.status_code == 400
    assert "malformed multipart" in r.json()["error"]
    r = site.client.post("/api/provider/publish", json={"file": "x"})
    assert r.status_code == 400
    assert "multipart/form-data" in r.json()["error"]
    assert site.world.market.listing_count() == 0


def test_without_a_live_enclave_publish_and_submit_are_409_and_store_nothing(site: Site, listed):
    text = site.client.post(
        "/api/assemble", json={"listing_ids": [listed[0]], "family": "mlp", "account": 1}
    ).json()["text"]
    site.world.market.revoke_enclave(site.world.admin, site.world.worker.address)
    before = site.blobs()
    r = _publish(site, npz_bytes(tabular(50, 1)))
    assert r.status_code == 409
    assert "no registered enclave" in r.json()["error"]
    r = site.client.post("/api/jobs", json={"text": text, "account": 1})
    assert r.status_code == 409
    assert site.blobs() == before
    assert site.world.market.listing_count() == 2
    assert site.world.market.job_count() == 0
