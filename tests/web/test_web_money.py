"""Money through the API: a provider's earnings and a buyer's refund seen and withdrawn, a listing
derived under new terms and one taken off sale; every refusal a 4xx naming what is wrong."""

from __future__ import annotations

from webworld import CONSUMER, PROVIDERS, Site

from sterling.chain.units import to_micro
from sterling.sdk.manage import has_prediction_price


def _job(site: Site, ids: list[int]) -> int:
    r = site.client.post("/api/assemble", json={"listing_ids": ids, "family": "logistic_regression",
                                                "account": CONSUMER})  # fmt: skip
    assert r.status_code == 200, r.json()
    r = site.client.post("/api/jobs", json={"text": r.json()["text"], "account": CONSUMER})
    assert r.status_code == 201, r.json()
    return int(r.json()["job_id"])


def _fee(site: Site, tx_hashes: list[str]) -> int:
    """The gas the withdrawal's transactions cost its sender."""
    total = 0
    for tx in tx_hashes:
        receipt = site.world.chain.w3.eth.get_transaction_receipt(tx)  # type: ignore[arg-type]
        total += int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
    return total


def test_a_provider_sees_its_earnings_after_settlement_and_withdraws_them(site: Site, listed):
    a, b = listed
    job_id = _job(site, [a, b])
    (handled,) = site.world.worker.poll()
    assert handled.state == "completed", handled.reason
    payout = site.world.market.job(job_id).allocations[0].payout
    assert payout == 25 * 10**14

    page = site.client.get(f"/api/accounts/{PROVIDERS[0]}/balance").json()
    address = site.world.providers[0].address
    assert page["address"] == address
    assert page["balance_wei"] == str(payout)
    assert page["payouts"] == [{"job_id": job_id, "listing_id": a, "state": "completed",
                                "payout_wei": str(payout)}]  # fmt: skip
    assert page["refunds"] == []
    mine = site.client.get("/api/provider/listings", params={"account": PROVIDERS[0]}).json()
    (item,) = mine["listings"]
    assert (item["id"], item["earned_wei"], item["jobs"], item["active"]) == (a, str(payout), 1, True)

    before = site.world.chain.w3.eth.get_balance(address)
    r = site.client.post(f"/api/accounts/{PROVIDERS[0]}/withdraw")
    assert r.status_code == 200, r.json()
    done = r.json()
    assert (done["withdrawn_wei"], done["balance_wei"]) == (str(payout), "0")
    after = site.world.chain.w3.eth.get_balance(address)
    assert after == before + payout - _fee(site, done["tx_hashes"])
    assert done["ether_wei"] == str(after)
    assert site.world.market.balance_of(address) == 0

    r = site.client.post(f"/api/accounts/{PROVIDERS[0]}/withdraw")
    assert r.status_code == 409
    assert "nothing to withdraw" in r.json()["error"]
    assert site.world.chain.w3.eth.get_balance(address) == after  # no gas spent on nothing


def test_a_buyer_sees_a_cancelled_jobs_refund_and_withdraws_it(site: Site, listed):
    job_id = _job(site, [listed[0]])
    escrow = site.world.market.job(job_id).escrow
    assert site.client.post(f"/api/jobs/{job_id}/cancel", json={"account": CONSUMER}).status_code == 200
    page = site.client.get(f"/api/accounts/{CONSUMER}/balance").json()
    assert page["balance_wei"] == str(escrow)
    assert page["refunds"] == [{"job_id": job_id, "state": "cancelled", "refund_wei": str(escrow)}]
    r = site.client.post(f"/api/accounts/{CONSUMER}/withdraw")
    assert r.status_code == 200, r.json()
    assert r.json()["withdrawn_wei"] == str(escrow)
    assert site.client.get(f"/api/accounts/{CONSUMER}/balance").json()["balance_wei"] == "0"


def test_an_account_outside_the_dev_accounts_is_refused_naming_the_field(site: Site):
    for r in (
        site.client.get("/api/accounts/99/balance"),
        site.client.post("/api/accounts/99/withdraw"),
        site.client.get("/api/provider/listings", params={"account": 99}),
    ):
        assert r.status_code == 400
        assert r.json()["field"] == "account"
        assert "dev account index" in r.json()["error"]
    r = site.client.get("/api/accounts/x/balance")
    assert (r.status_code, r.json()["field"]) == (400, "account")


def test_a_provider_derives_a_listing_under_new_terms_on_the_same_budget(site: Site, listed):
    a, _ = listed
    body = {"account": PROVIDERS[0], "price_per_job_wei": "7", "max_epsilon_per_job": 0.5}
    if has_prediction_price():
        body["price_per_prediction_wei"] = "9"
    r = site.client.post(f"/api/provider/listings/{a}/derive", json=body)
    assert r.status_code == 201, r.json()
    out = r.json()
    assert out["parent"] == a
    child = site.world.market.listing(out["listing_id"])
    parent = site.world.market.listing(a)
    assert (child.parent, child.data_hash, child.provider) == (a, parent.data_hash, parent.provider)
    assert child.terms.price_per_job == 7
    assert child.terms.price_per_epsilon == parent.terms.price_per_epsilon  # kept
    assert child.terms.max_epsilon_per_job == to_micro(0.5)
    assert child.contract_hash == parent.contract_hash
    if has_prediction_price():
        assert child.terms.price_per_prediction == 9  # type: ignore[attr-defined]
    assert out["listing"]["parent"] == a
    assert out["listing"]["terms"]["price_per_job_wei"] == "7"
    assert child.open
    mine = site.client.get("/api/provider/listings", params={"account": PROVIDERS[0]}).json()
    assert [x["id"] for x in mine["listings"]] == [a, child.id]


def test_derive_refusals_name_the_field(site: Site, listed):
    a, _ = listed
    count = site.world.market.listing_count()
    cases = [
        ({"account": PROVIDERS[1]}, a, 400, "account", "is not yours"),
        ({"account": PROVIDERS[0]}, 99, 404, None, "no listing 99"),
        ({"account": PROVIDERS[0], "max_epsilon_per_job": 9}, a, 400, "max_epsilon_per_job",
         "exceeds the budget"),
        ({"account": PROVIDERS[0], "price_per_job_wei": "-1"}, a, 400, "price_per_job_wei", "wei"),
        ({"account": PROVIDERS[0], "policy": "0x1234"}, a, 400, "policy", "policy must be"),
        ({"account": PROVIDERS[0], "policy": "0x" + "11" * 20}, a, 400, "policy", "not a contract"),
        ({"account": PROVIDERS[0], "pinned_measurement": "abc"}, a, 400, "pinned_measurement", "32 bytes"),
        ({"account": PROVIDERS[0], "contract": "other"}, a, 400, "contract", "contract"),
        ({"account": PROVIDERS[0], "budget": 3}, a, 400, "budget", "budget"),
    ]  # fmt: skip
    for body, lid, status, field, words in cases:
        r = site.client.post(f"/api/provider/listings/{lid}/derive", json=body)
        assert (r.status_code, r.json()["field"]) == (status, field), (body, r.json())
        assert words in r.json()["error"], (body, r.json())
    assert site.world.market.listing_count() == count


def test_a_provider_takes_a_listing_off_sale_once(site: Site, listed):
    a, b = listed
    r = site.client.post(f"/api/provider/listings/{a}/withdraw", json={"account": PROVIDERS[1]})
    assert (r.status_code, r.json()["field"]) == (400, "account")
    assert "is not yours" in r.json()["error"]
    r = site.client.post("/api/provider/listings/99/withdraw", json={"account": PROVIDERS[0]})
    assert r.status_code == 404
    r = site.client.post(f"/api/provider/listings/{a}/withdraw", json={"account": PROVIDERS[0]})
    assert r.status_code == 200, r.json()
    assert r.json() == {"listing_id": a, "active": False, "open": False}
    assert not site.world.market.is_open(a)
    on_sale = site.client.get("/api/listings", params={"open_only": True}).json()["items"]
    assert [x["id"] for x in on_sale] == [b]
    r = site.client.post(f"/api/provider/listings/{a}/withdraw", json={"account": PROVIDERS[0]})
    assert r.status_code == 409
    assert "already withdrawn" in r.json()["error"]
