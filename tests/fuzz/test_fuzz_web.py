"""API request bodies, query strings and uploads (web/routes/*), on a real market (py-evm, sealed data).

Whatever arrives, the answer is never a 500: a refusal is a 4xx whose body is
``{"error": <one line>, "field": ...}``, and it leaves the market as it was: no block mined, no
listing or job added, no blob stored. A request that is still valid after mutation may succeed
(and then change the state, which becomes the new reference).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fuzzkit import fuzz, mutated
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from webworld import CONSUMER, Site, tabular

from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset
from sterling.storage.manifest import MANIFEST_FORMAT

# The site is module-scoped (one market for every example: building one takes seconds).
WEB = dict(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def state(site: Site) -> tuple[Any, ...]:
    m = site.world.market
    return (int(m.chain.w3.eth.block_number), m.listing_count(), m.job_count(), tuple(site.blobs()))


def check_answer(r: Any) -> dict[str, Any] | list[Any] | None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
    else:
        return None
    if r.status_code >= 400:
        assert isinstance(body, dict), body
        assert set(body) >= {"error", "field"}, body
        assert isinstance(body["error"], str), body
        assert body["error"].strip(), body
        assert "\n" not in body["error"], body
        assert body["field"] is None or isinstance(body["field"], str)
    return body


def assert_refusal_changed_nothing(site: Site, before: tuple[Any, ...], r: Any) -> tuple[Any, ...]:
    check_answer(r)
    after = state(site)
    if r.status_code >= 400:
        assert after == before, "a refused request changed the market"
    return after


def job_doc(site: Site) -> dict[str, Any]:
    return json.loads(json.dumps(site.world.job([1]).model_dump(mode="json")))


BODY_ENCODINGS = st.sampled_from(["json", "json", "json", "raw", "deep", "form", "none"])


def send(site: Site, path: str, body: Any, encoding: str, extra: bytes) -> Any:
    client = site.client
    if encoding == "json":
        return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    if encoding == "raw":
        return client.post(path, content=json.dumps(body).encode()[: len(extra) * 7] + extra,
                           headers={"content-type": "application/json"})  # fmt: skip
    if encoding == "deep":
        return client.post(
            path, content=b"[" * 70_000 + b"]" * 70_000, headers={"content-type": "application/json"}
        )
    if encoding == "form":
        return client.post(path, data={"text": "x"}, headers={})
    return client.post(path, content=b"")


ROUTES = st.sampled_from(
    ["/api/verify", "/api/jobs", "/api/assemble", "/api/jobs/1/cancel", "/api/provider/check-contract"]
)


@st.composite
def bodies(draw: st.DrawFn, route: str, job: dict[str, Any]) -> Any:
    if route in ("/api/verify", "/api/jobs"):
        inner, _ = draw(mutated(job)) if draw(st.booleans()) else (job, [])
        valid: dict[str, Any] = {"text": json.dumps(inner), "account": CONSUMER}
    elif route == "/api/assemble":
        valid = {"listing_ids": [1], "family": "logistic_regression", "account": CONSUMER}
    elif route == "/api/provider/check-contract":
        valid = {"source": "def check(request):\n    return True\n"}
    else:
        valid = {"account": CONSUMER}
    return draw(mutated(valid))[0] if draw(st.integers(0, 3)) else valid


@fuzz(25, **WEB)
@given(st.data(), ROUTES, BODY_ENCODINGS, st.binary(max_size=8))
def test_json_bodies_are_answered_without_a_500_and_refusals_change_nothing(
    fuzz_site, data, route, encoding, extra
):
    site = fuzz_site
    body = data.draw(bodies(route, job_doc(site)))
    before = state(site)
    r = send(site, route, body, encoding, extra)
    assert_refusal_changed_nothing(site, before, r)
    if encoding == "deep":  # found by fuzzing: ~60 000 nested brackets crashed the server process
        assert r.status_code == 400
        assert "nests deeper" in r.json()["error"]


JOB_TEXTS = st.sampled_from(
    [
        "[" * 300 + "]" * 300,  # found by fuzzing: pydantic could not serialize the report (500)
        '{"name": ' + "[" * 300 + "]" * 300 + "}",
        "[" * 100_000,  # found by fuzzing: json.loads crashed the process (segmentation fault)
        '{"listings": [{"listing_id": 1, "epsilon": 1e308}]}',
    ]
)


@fuzz(4, **WEB)
@given(JOB_TEXTS)
def test_job_texts_found_by_fuzzing_are_reported_not_crashes(fuzz_site, text):
    r = fuzz_site.client.post("/api/verify", json={"text": text, "account": CONSUMER})
    body = check_answer(r)
    assert r.status_code == 200
    assert isinstance(body, dict)
    assert body["ok"] is False


@fuzz(4, **WEB)
@given(st.sampled_from([{"target_epsilon": 1e-9}, {"steps": 1_000_000}, {"delta": 1e-300},
                        {"target_epsilon": None, "noise_multiplier": 0.001}]))  # fmt: skip
def test_extreme_training_is_a_violation_in_the_editor(fuzz_site, change):
    doc = job_doc(fuzz_site)  # found by fuzzing: these were 500s (ValueError, OverflowError, 38 GiB)
    doc["training"] = {k: v for k, v in {**doc["training"], **change}.items() if v is not None}
    r = fuzz_site.client.post("/api/verify", json={"text": json.dumps(doc), "account": CONSUMER})
    body = check_answer(r)
    assert r.status_code == 200
    assert isinstance(body, dict)
    assert any(v["term"] == "training" for v in body["violations"]), body


ID = st.one_of(
    st.integers(-(2**70), 2**260).map(str), st.sampled_from(["abc", "1.5", "", "%00", "0x1", "é", "1e3"])
)
QUERY = st.dictionaries(
    st.sampled_from(
        ["open_only", "modality", "q", "sort", "order", "limit", "before", "name", "job_id", "listing_id"]
    ),
    st.one_of(ID, st.text(max_size=10)),
    max_size=3,
)
GETS = st.sampled_from(
    ["/api/listings", "/api/listings/{}", "/api/listings/{}/preview.png", "/api/jobs/{}", "/api/jobs",
     "/api/explorer/blocks", "/api/explorer/blocks/{}", "/api/explorer/transactions/{}",
     "/api/explorer/events",
     "/api/explorer/transactions", "/api/status", "/api/enclaves"]
)  # fmt: skip


@fuzz(30, **WEB)
@given(GETS, ID, QUERY)
@example("/api/listings/{}", str(2**256), {})
def test_paths_and_query_strings_are_answered_without_a_500(fuzz_site, route, ident, query):
    before = state(fuzz_site)
    r = fuzz_site.client.get(route.format(ident), params=query)
    check_answer(r)
    assert state(fuzz_site) == before


CSV = b"f0,f1,f2,f3,f4,f5,label\n" + b"".join(
    b"%d,0.5,1,2,3,4,%s\n" % (i, b"healthy" if i % 2 else b"sick") for i in range(40)
)
FILES = st.sampled_from(
    [
        CSV,
        CSV[:60],
        CSV.replace(b"0.5", b"nan", 1),
        b"",
        b"\xff\xfe" + CSV,
        b"PK\x03\x04junk",
        CSV.replace(b"label", b"lbl"),
    ]
)
NAMES = st.sampled_from(
    ["data.csv", "data.csv", "data.npz", "data.zip", "data", "../../etc/passwd.csv", "é.parquet", ""]
)


def _publish_form(site: Site) -> dict[str, str]:
    return {
        **site.publish_form(),
        "allowed_families": "logistic_regression,mlp",
        "publish_class_counts": "true",
    }


@fuzz(12, **WEB)
@given(st.data(), FILES, NAMES)
def test_publish_uploads_list_or_are_refused_storing_nothing(fuzz_site, data, content, filename):
    site = fuzz_site
    form, _ = data.draw(mutated(_publish_form(site), values=st.one_of(
        st.sampled_from(["", "-1", "1e999", "nan", "inf", "0", "9" * 80, "true", "maybe", "cnn,rnn",
                         "def check(r):\n  return 1/0\n", "import os\n", "é", "\x00"]),
    )))  # fmt: skip
    form = {k: str(v) for k, v in form.items()}
    before = state(site)
    r = site.client.post("/api/provider/publish", data=form, files={"file": (filename, content)})
    assert_refusal_changed_nothing(site, before, r)


@fuzz(10, **WEB)
@given(FILES, NAMES, st.sampled_from(["1", "1,1", "", "0", "a", "1,99", str(2**256), " 1 ,", "1;2"]),
       st.sampled_from([{}, {"label_column": "f0"}, {"label_column": ""}, {"extra": "x"}]))  # fmt: skip
def test_validation_uploads_are_stored_or_refused_storing_nothing(fuzz_site, content, filename, ids, extra):
    site = fuzz_site
    before = state(site)
    r = site.client.post(
        "/api/validation", data={"listing_ids": ids, **extra}, files={"file": (filename, content)}
    )
    assert_refusal_changed_nothing(site, before, r)


# ----------------------------------------------------------------------- providers' manifests


def _publish_manifest(site: Site, manifest: Any) -> int:
    """A listing on chain whose manifest is `manifest`, as a provider's own client might publish it."""
    world = site.world
    sealed = seal_dataset(tabular(50, 3), world.store, name="crafted")  # fresh ciphertext: data lists once
    ref = world.store.put_bytes(manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode())
    terms = ListingTerms(10**15, 10**15, 5.0, 2.0, 1e-5)
    done = publish(world.market, world.providers[1], replace(sealed, manifest=ref), terms,
                   enclave=choose_enclave(world.market, trust=world.trust))  # fmt: skip
    return done.listing_id


def _valid_manifest() -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "name": "crafted",
        "description": "a provider's own manifest",
        "schema": tabular(50, 3).schema.to_json(),
        "ciphertext": {"uri": "file:///nowhere/" + "00" * 32, "sha256": "0x" + "00" * 32},
        "contract": None,
        "terms": {"allowed_model_families": ["logistic_regression"], "appraisal_fee_wei": 0},
        "class_counts": {"healthy": 25, "sick": 25},
    }


@fuzz(5, **WEB)
@given(mutated(_valid_manifest()).map(lambda case: case[0]))
@example(b"[" * 70_000 + b"]" * 70_000)  # found by fuzzing: a deep manifest crashed every reader
@example({**_valid_manifest(), "terms": ["not", "a", "dict"]})
@example({**_valid_manifest(), "schema": None})
def test_a_broken_manifest_breaks_only_its_own_listing(fuzz_site, manifest):
    site = fuzz_site
    lid = _publish_manifest(site, manifest)
    listings = site.client.get("/api/listings")
    check_answer(listings)
    assert listings.status_code == 200
    assert 1 in [item["id"] for item in listings.json()["items"]]
    check_answer(site.client.get(f"/api/listings/{lid}"))
    check_answer(site.client.get(f"/api/listings/{lid}/preview.png"))
    doc = job_doc(site)
    doc["listings"] = [{"listing_id": lid, "epsilon": 1.0}]
    # A fixed sample rate and σ, so the accountant's answer is cached whatever rows the manifest claims.
    doc["training"] = {"steps": 60, "sample_rate": 0.5, "noise_multiplier": 30.0, "learning_rate": 1.0}
    before = state(site)
    for route in ("/api/verify", "/api/jobs"):
        r = site.client.post(route, json={"text": json.dumps(doc), "account": CONSUMER})
        before = assert_refusal_changed_nothing(site, before, r)
