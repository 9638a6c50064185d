"""Dataset assembly and live verification: the job the server writes passes, and every problem has a line."""

from __future__ import annotations

import json

import numpy as np
from webworld import CONSUMER, Site, tabular

from sterling.data.dataset import Dataset, Schema
from sterling.privacy import accountant


def _assemble(site: Site, ids, family="logistic_regression", account=CONSUMER):
    return site.client.post("/api/assemble", json={"listing_ids": ids, "family": family, "account": account})


def test_assembled_job_satisfies_every_listing_with_one_calibrated_epsilon(site: Site, listed):
    a, b = listed  # caps 2.0 and 1.5, budgets 5
    r = _assemble(site, [a, b])
    assert r.status_code == 200, r.json()
    doc = r.json()
    assert doc["report"]["ok"] is True, doc["report"]["violations"]
    job = doc["job"]
    assert json.loads(doc["text"]) == job
    assert doc["text"].startswith('{\n  "')
    assert [x["epsilon"] for x in job["listings"]] == [1.5, 1.5]  # the least cap
    t = job["training"]
    train_rows = int(700 * (1 - job["evaluation"]["holdout_fraction"]))
    eps = accountant.pld_epsilon(
        accountant.DpSgdParams(
            t["noise_multiplier"], t["expected_batch_size"] / train_rows, t["steps"], t["delta"]
        )
    )
    total = eps + job["evaluation"]["metrics_epsilon"]
    assert total <= 1.5 + 1e-9  # calibration never overshoots
    assert total > 1.5 * 0.97  # ... and does not waste the ε paid for
    # payment cap = the sum of the quoted prices: 10^15 + 1.5·10^15 and 2·10^15 + 1.5·10^15
    assert job["payment_cap_wei"] == 6 * 10**15
    s = doc["report"]["summary"]
    assert s["price_per_listing_wei"] == {str(a): str(25 * 10**14), str(b): str(35 * 10**14)}
    assert s["total_price_wei"] == str(6 * 10**15)
    assert job["model"]["layers"][-1] == {"type": "linear", "out": 2}


def test_assembly_uses_the_remaining_budget_when_it_is_below_the_cap(site: Site):
    lid = site.world.list_data(tabular(300, 5), budget=0.7, cap=0.7)
    doc = _assemble(site, [lid], family="mlp").json()
    assert doc["report"]["ok"] is True
    assert doc["job"]["listings"] == [{"listing_id": lid, "epsilon": 0.7}]
    assert doc["report"]["summary"]["model_family"] == "mlp"


def test_assembly_refuses_different_schemas_unknown_closed_and_disallowed(site: Site, listed):
    a, _ = listed
    images = Dataset(
        np.zeros((40, 8, 8, 1), dtype=np.uint8),
        np.arange(40, dtype=np.int64) % 2,
        Schema("image", (8, 8, 1), "uint8", ("0", "1"), 40),
    )
    img = site.world.list_data(images, provider=2)
    r = _assemble(site, [a, img])
    assert r.status_code == 400
    assert r.json()["field"] == "listing_ids"
    assert f"listing {img} holds image" in r.json()["error"]
    r = _assemble(site, [a, 42])
    assert r.status_code == 400
    assert r.json() == {"error": "no listing 42", "field": "listing_ids"}
    site.world.market.withdraw_listing(site.world.providers[0], a)
    r = _assemble(site, [a])
    assert r.status_code == 400
    assert r.json()["error"] == f"listing {a} is not on sale"
    r = _assemble(site, [img], family="cnn")
    assert r.status_code == 200, r.json()
    assert r.json()["report"]["ok"], r.json()
    r = _assemble(site, [listed[1]], family="cnn")
    assert r.status_code == 400
    assert r.json()["field"] == "family"
    assert "images" in r.json()["error"]


def test_assembly_bad_bodies_are_400_naming_the_field(site: Site, listed):
    a, _ = listed
    cases = [
        ({"listing_ids": [a], "family": "forest", "account": 1}, "family"),
        ({"listing_ids": [], "family": "mlp", "account": 1}, "listing_ids"),
        ({"listing_ids": ["one"], "family": "mlp", "account": 1}, "listing_ids.0"),
        ({"listing_ids": [a], "family": "mlp", "account": "1"}, "account"),
        ({"listing_ids": [a], "family": "mlp"}, "account"),
        ({"listing_ids": [a], "family": "mlp", "account": 1, "colour": "red"}, "colour"),
    ]
    for body, field in cases:
        r = site.client.post("/api/assemble", json=body)
        assert r.status_code == 400, body
        assert r.json()["field"] == field, (body, r.json())
    r = _assemble(site, [a], account=99)
    assert r.status_code == 400
    assert "from 0 to 9" in r.json()["error"]
    r = site.client.post("/api/assemble", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"] == "the request body is not valid JSON"


def _verify(site: Site, text: str, account=CONSUMER):
    r = site.client.post("/api/verify", json={"text": text, "account": account})
    assert r.status_code == 200, r.json()
    return r.json()


def test_verify_reports_json_syntax_errors_with_line_and_column(site: Site):
    report = _verify(site, '{\n  "listings": [\n    {"listing_id": 1,}\n  ]\n}')
    assert report["ok"] is False
    assert report["violations"] == []
    assert report["parse_error"]["line"] == 3
    assert report["parse_error"]["column"] == 22


def test_verify_turns_schema_errors_into_violations_at_their_line(site: Site, listed):
    job = _assemble(site, list(listed)).json()["job"]
    job["training"]["learning_rate"] = "fast"
    job["model"]["layers"][1]["out"] = -3
    text = json.dumps(job, indent=2)
    report = _verify(site, text)
    assert report["ok"] is False
    assert report["parse_error"] is None
    by_field = {v["field"]: v for v in report["violations"]}
    assert set(by_field) == {"training.learning_rate", "model.layers.1.linear.out"}
    lines = text.splitlines()
    assert '"learning_rate"' in lines[by_field["training.learning_rate"]["line"] - 1]
    assert '"out": -3' in lines[by_field["model.layers.1.linear.out"]["line"] - 1]
    assert all(v["term"] == "schema" for v in report["violations"])


def test_verify_places_term_violations_at_the_field_and_passes_a_good_job(site: Site, listed):
    a, b = listed
    good = _assemble(site, [a, b]).json()
    assert _verify(site, good["text"]) == good["report"]
    job = good["job"]
    job["listings"][1]["epsilon"] = 1.9  # b's cap is 1.5
    job["payment_cap_wei"] = "a lot"  # not a number: a schema problem, checked first
    text = json.dumps(job, indent=2)
    report = _verify(site, text)
    assert [v["field"] for v in report["violations"]] == ["payment_cap_wei"]
    job["payment_cap_wei"] = 10
    text = json.dumps(job, indent=2)
    report = _verify(site, text)
    terms = {v["term"]: v for v in report["violations"]}
    assert set(terms) == {"max_epsilon_per_job", "price"}
    cap = terms["max_epsilon_per_job"]
    assert (cap["listing_id"], cap["asked"], cap["allowed"], cap["field"]) == (
        b,
        1.9,
        1.5,
        "listings.1.epsilon",
    )
    assert text.splitlines()[cap["line"] - 1].strip().startswith('"epsilon": 1.9')
    assert '"payment_cap_wei": 10' in text.splitlines()[terms["price"]["line"] - 1]


def test_verify_body_must_have_the_right_shape(site: Site):
    assert site.client.post("/api/verify", json={"text": 3, "account": 1}).json()["field"] == "text"
    assert site.client.post("/api/verify", json={"text": "{}"}).status_code == 400
    r = site.client.post("/api/verify", json={"text": "{}", "account": 10})
    assert r.status_code == 400
    assert r.json()["field"] is None
    assert "account" in r.json()["error"]
