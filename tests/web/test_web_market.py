"""The marketplace routes: status, accounts, listings (filter, sort, detail, preview), templates, pages."""

from __future__ import annotations

import json

from webworld import CONSUMER, PROVIDERS, Site, tabular

from sterling.enclave.contracts import example
from sterling.sdk.preview import render
from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset

PNG = b"\x89PNG\r\n\x1a\n"


def test_status_reports_the_chain_and_that_the_enclave_is_a_simulation(site: Site, listed):
    status = site.client.get("/api/status").json()
    m = site.world.market
    assert status["chain_id"] == m.chain.chain_id
    assert status["marketplace"] == m.address
    assert status["block"] == m.chain.w3.eth.block_number
    assert (status["listings"], status["jobs"], status["enclaves"]) == (2, 0, 1)
    assert status["simulation"] is True


def test_status_is_not_simulation_when_the_attestation_signer_is_not_the_local_key(site: Site):
    (site.world.state / "simulated-platform.key").unlink()
    assert site.client.get("/api/status").json()["simulation"] is False
    assert [e["simulated"] for e in site.client.get("/api/enclaves").json()] == [False]


def test_accounts_list_dev_accounts_with_balances_and_roles(site: Site, listed):
    rows = site.client.get("/api/accounts").json()
    assert [r["index"] for r in rows] == list(range(len(site.world.chain.dev_accounts)))
    assert rows[0]["role_hint"] == "admin"
    assert rows[PROVIDERS[0]]["role_hint"] == "provider"
    assert rows[CONSUMER]["role_hint"] is None
    assert rows[CONSUMER]["address"] == site.world.consumer.address
    assert int(rows[CONSUMER]["ether_wei"]) == site.world.chain.w3.eth.get_balance(
        site.world.consumer.address
    )
    assert isinstance(rows[CONSUMER]["ether_wei"], str)  # wei passes 2^53
    assert rows[CONSUMER]["market_balance_wei"] == "0"


def test_listings_show_terms_budget_schema_and_price_at_cap(site: Site, listed):
    a, b = listed
    rows = site.client.get("/api/listings").json()["items"]
    assert [r["id"] for r in rows] == [a, b]
    first = rows[0]
    assert first["provider"] == site.world.providers[0].address
    assert (first["modality"], first["rows"], first["input_shape"]) == ("tabular", 400, [6])
    assert first["classes"] == ["healthy", "sick"]
    assert first["class_counts"] is None  # not published
    assert first["terms"]["price_per_job_wei"] == str(10**15)
    assert first["terms"]["max_epsilon_per_job"] == 2.0
    assert first["terms"]["has_contract"] is False
    assert first["budget"] == {
        "epsilon_total": 5.0,
        "epsilon_spent": 0.0,
        "epsilon_reserved": 0.0,
        "epsilon_left": 5.0,
    }
    # 10^15 per job + 10^15 per ε × the 2 ε cap
    assert first["price_at_cap_wei"] == str(3 * 10**15)
    assert rows[1]["price_at_cap_wei"] == str(2 * 10**15 + 15 * 10**14)
    assert first["preview"] is False
    assert first["parent"] is None
    assert first["open"] is True


def test_listings_filter_and_sort(site: Site, listed):
    a, b = listed
    site.world.market.withdraw_listing(site.world.providers[0], a)
    get = site.client.get
    assert [r["id"] for r in get("/api/listings", params={"open_only": "true"}).json()["items"]] == [b]
    assert [r["id"] for r in get("/api/listings", params={"sort": "rows"}).json()["items"]] == [b, a]
    # price at the cap: a 3·10^15, b 3.5·10^15
    assert [
        r["id"] for r in get("/api/listings", params={"sort": "price", "order": "desc"}).json()["items"]
    ] == [b, a]
    assert [r["id"] for r in get("/api/listings", params={"sort": "price"}).json()["items"]] == [a, b]
    assert get("/api/listings", params={"modality": "image"}).json()["items"] == []
    found = get("/api/listings", params={"q": "P1"}).json()["items"]
    assert [r["id"] for r in found] == [b]  # names are p0, p1


def test_listing_filters_refuse_bad_values_naming_the_parameter(site: Site):
    for params, field in (
        ({"sort": "colour"}, "sort"),
        ({"order": "up"}, "order"),
        ({"open_only": "maybe"}, "open_only"),
    ):
        r = site.client.get("/api/listings", params=params)
        assert r.status_code == 400
        assert r.json()["field"] == field
        assert field in r.json()["error"]


def test_listing_detail_has_the_contract_source_and_data_hash(site: Site):
    source = example("logreg_only")
    lid = site.world.list_data(tabular(200, 3), contract=source)
    doc = site.client.get(f"/api/listings/{lid}").json()
    listing = site.world.market.listing(lid)
    assert doc["contract_source"] == source
    assert doc["terms"]["has_contract"] is True
    assert doc["data_hash"] == "0x" + listing.data_hash.hex()
    assert doc["manifest_uri"] == listing.data_uri


def test_unknown_and_malformed_listing_ids(site: Site, listed):
    r = site.client.get("/api/listings/99")
    assert r.status_code == 404
    assert r.json() == {"error": "no listing 99 (there are 2)", "field": None}
    r = site.client.get("/api/listings/abc")
    assert r.status_code == 400
    assert r.json()["field"] == "listing_id"
    assert site.client.get("/api/listings/99/preview.png").status_code == 404


def test_preview_only_where_the_provider_published_one(site: Site, listed):
    a, _ = listed
    r = site.client.get(f"/api/listings/{a}/preview.png")
    assert r.status_code == 404
    assert "no published preview" in r.json()["error"]
    w = site.world
    data = tabular(120, 4)
    sealed = seal_dataset(
        data, w.store, name="with preview", preview_png=render(data), publish_class_counts=True
    )
    terms = ListingTerms(10**15, 10**15, 5.0, 2.0, 1e-5)
    lid = publish(
        w.market, w.providers[2], sealed, terms, enclave=choose_enclave(w.market, trust=w.trust)
    ).listing_id
    doc = site.client.get(f"/api/listings/{lid}").json()
    assert doc["preview"] is True
    assert doc["class_counts"] == [data.class_counts()["healthy"], data.class_counts()["sick"]]
    r = site.client.get(f"/api/listings/{lid}/preview.png")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG)
    assert r.content == render(data)


def test_templates_offer_three_job_families_and_the_provider_contract_examples(site: Site):
    doc = site.client.get("/api/templates").json()
    assert set(doc["jobs"]) == {"logistic_regression", "mlp", "cnn"}
    assert all(t["title"] and t["description"] for t in doc["jobs"].values())
    cnn = json.loads(doc["jobs"]["cnn"]["text"])  # a whole job, as `sterling job template cnn --listing 1`
    assert cnn["listings"] == [{"listing_id": 1, "epsilon": 1.0}]
    assert cnn["model"] == doc["jobs"]["cnn"]["model"]
    assert cnn["training"]["target_epsilon"] == 0.9
    contracts = doc["provider_contracts"]
    assert contracts["logreg_only"]["source"] == example("logreg_only")
    assert contracts["logreg_only"]["title"].startswith("No model family but logistic regression")
    assert "consumer_drop_harmful" not in contracts  # a consumer hook, not a provider contract


def test_pages_schema_and_no_cdn_docs(site: Site):
    r = site.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()
    assert site.client.get("/static/index.html").text == r.text
    schema = site.client.get("/openapi.json").json()
    for path in ("/api/status", "/api/listings/{listing_id}", "/api/assemble", "/api/jobs/{job_id}/stream"):
        assert path in schema["paths"]
    docs = site.client.get("/api-docs")
    assert docs.status_code == 200
    assert "<code>/api/jobs/{job_id}/cancel</code>" in docs.text
    assert "Cancel a pending job" in docs.text
    assert "cdn" not in docs.text.lower()
    for path in ("/docs", "/redoc"):
        r = site.client.get(path)
        assert r.status_code == 404
        assert r.json()["error"] == f"no such route: GET {path}"
