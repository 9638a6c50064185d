"""Jobs through the API: submit, train in the real (simulated) enclave, watch, see results and payouts."""

from __future__ import annotations

import json
import threading

from webworld import CONSUMER, ORIGIN, TOKEN, Site, tabular

from sterling.chain.types import JobState
from sterling.enclave.contracts import example


def _assembled(site: Site, ids, family="logistic_regression") -> dict:
    r = site.client.post("/api/assemble", json={"listing_ids": ids, "family": family, "account": CONSUMER})
    assert r.status_code == 200, r.json()
    return r.json()


def _submit(site: Site, text: str, account=CONSUMER):
    return site.client.post("/api/jobs", json={"text": text, "account": account})


def _events(lines) -> list[tuple[str, dict]]:
    out, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            out.append((name, json.loads(line.removeprefix("data: "))))
    return out


def test_a_job_submitted_through_the_api_trains_settles_and_shows_its_result(site: Site, listed):
    a, b = listed
    job = _assembled(site, [a, b])
    before = site.world.chain.w3.eth.get_balance(site.world.consumer.address)
    r = _submit(site, job["text"])
    assert r.status_code == 201, r.json()
    sub = r.json()
    assert sub["job_id"] == 1
    assert sub["escrow_wei"] == str(6 * 10**15)
    assert sub["price_per_listing_wei"] == {str(a): str(25 * 10**14), str(b): str(35 * 10**14)}
    assert site.world.chain.w3.eth.get_balance(site.world.consumer.address) < before - 6 * 10**15
    page = site.client.get("/api/jobs/1").json()
    assert (page["state"], page["result"], page["refund_wei"]) == ("pending", None, None)
    assert [x["listing_id"] for x in page["allocations"]] == [a, b]
    assert {e["name"] for e in page["events"]} == {"JobSubmitted", "EpsilonReserved"}  # oldest first

    (handled,) = site.world.worker.poll()
    assert handled.state == "completed", handled.reason
    page = site.client.get("/api/jobs/1").json()
    assert page["state"] == "completed"
    assert page["enclave"] == site.world.worker.address
    chain_job = site.world.market.job(1)
    assert [x["payout_wei"] for x in page["allocations"]] == [str(x.payout) for x in chain_job.allocations]
    assert [x["payout_wei"] for x in page["allocations"]] == [str(25 * 10**14), str(35 * 10**14)]
    assert page["refund_wei"] == "0"
    assert all(0 < x["epsilon_spent"] <= x["epsilon_reserved"] == 1.5 for x in page["allocations"])
    history = page["progress"]["history"]
    assert history[0]["step"] == 0
    assert history[-1]["step"] == page["progress"]["steps"] > 0
    assert [h["step"] for h in history] == sorted(h["step"] for h in history)
    assert all(h["timestamp"] > 0 and h["block"] > 0 for h in history)
    result = page["result"]
    assert result["model"]["family"] == "logistic_regression"
    assert result["model"]["params"] == 6 * 2 + 2
    assert 0.5 < result["metrics"]["accuracy"] <= 1.0  # separable data, DP noise on the release
    assert result["appraisal"]["method"] == "row_share"
    assert result["appraisal"]["values"] is None

    rows = site.client.get("/api/jobs").json()["items"]
    assert rows == [
        {
            "id": 1,
            "consumer": site.world.consumer.address,
            "state": "completed",
            "escrow_wei": str(chain_job.escrow),
            "listing_ids": [a, b],
            "step": page["progress"]["step"],
            "steps": page["progress"]["steps"],
            "epsilon_spent": page["progress"]["epsilon_spent"],
        }
    ]
    with site.client.stream("GET", "/api/jobs/1/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _events(stream.iter_lines())
    assert events == [("done", {**events[0][1], "job_id": 1, "state": "completed"})]
    provider = site.client.get("/api/accounts").json()[3]
    assert provider["market_balance_wei"] == str(35 * 10**14)


def test_a_job_that_violates_terms_is_refused_with_its_report_and_nothing_is_spent(site: Site, listed):
    a, b = listed
    doc = _assembled(site, [a, b])["job"]
    doc["listings"][0]["epsilon"] = 4.0  # a's cap is 2
    doc["payment_cap_wei"] = 1
    balance = site.world.chain.w3.eth.get_balance(site.world.consumer.address)
    blobs = site.blobs()
    r = _submit(site, json.dumps(doc, indent=2))
    assert r.status_code == 400
    body = r.json()
    assert body["field"] is None
    assert body["error"].startswith("the job violates")
    assert {v["term"] for v in body["report"]["violations"]} >= {"max_epsilon_per_job", "price"}
    assert site.world.market.job_count() == 0
    assert site.world.chain.w3.eth.get_balance(site.world.consumer.address) == balance
    assert site.blobs() == blobs
    r = _submit(site, "{")
    assert r.status_code == 400
    assert r.json()["report"]["parse_error"]["line"] == 1


def test_a_job_a_provider_contract_refuses_is_refused_before_anything_is_spent(site: Site):
    lid = site.world.list_data(tabular(300, 7), contract=example("logreg_only"))
    job = _assembled(site, [lid], family="mlp")
    assert job["report"]["ok"] is True  # the terms allow it; the contract will not
    r = _submit(site, job["text"])
    assert r.status_code == 400, r.json()
    (v,) = r.json()["report"]["violations"]
    assert (v["term"], v["listing_id"]) == ("provider_contract", lid)
    assert "only logistic regression" in r.json()["error"]
    assert site.world.market.job_count() == 0


def test_cancel_refunds_a_pending_job_to_its_consumer_only(site: Site, listed):
    job = _assembled(site, [listed[0]])
    job_id = _submit(site, job["text"]).json()["job_id"]
    r = site.client.post(f"/api/jobs/{job_id}/cancel", json={"account": 2})
    assert r.status_code == 400
    assert "belongs to" in r.json()["error"]
    r = site.client.post(f"/api/jobs/{job_id}/cancel", json={"account": CONSUMER})
    assert r.status_code == 200, r.json()
    escrow = site.world.market.job(job_id).escrow
    assert r.json() == {"job_id": job_id, "state": "cancelled", "refund_wei": str(escrow)}
    assert site.world.market.balance_of(site.world.consumer.address) == escrow
    assert site.world.market.listing(listed[0]).budget.reserved == 0
    r = site.client.post(f"/api/jobs/{job_id}/cancel", json={"account": CONSUMER})
    assert r.status_code == 409
    assert "cancelled" in r.json()["error"]
    page = site.client.get(f"/api/jobs/{job_id}").json()
    assert page["state"] == "cancelled"
    assert page["refund_wei"] == str(escrow)


def test_stream_pushes_progress_then_done_and_ends(site: Site, listed):
    job = _assembled(site, [listed[0]])
    job_id = _submit(site, job["text"]).json()["job_id"]
    cancelled = threading.Event()
    site.context.keepalive_seconds = 0  # a keep-alive comment after every quiet poll

    def cancel_soon() -> None:
        cancelled.wait(10)
        site.world.market.cancel_job(site.world.consumer, job_id)

    thread = threading.Thread(target=cancel_soon)
    thread.start()
    lines = []
    with site.client.stream("GET", f"/api/jobs/{job_id}/stream") as stream:
        for line in stream.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                cancelled.set()
    thread.join()
    events = _events(lines)
    assert [name for name, _ in events] == ["progress", "done"]
    assert events[0][1]["state"] == "pending"
    assert events[1][1]["state"] == "cancelled"
    assert ": keep-alive" in lines
    assert site.world.market.job(job_id).state is JobState.CANCELLED


def test_unknown_jobs_and_bad_bodies(site: Site, listed):
    for path in ("/api/jobs/7", "/api/jobs/7/stream"):
        r = site.client.get(path)
        assert r.status_code == 404
        assert r.json() == {"error": "no job 7 (there are 0)", "field": None}
    r = site.client.post("/api/jobs/7/cancel", json={"account": CONSUMER})
    assert r.status_code == 404
    assert site.client.get("/api/jobs/x").json()["field"] == "job_id"
    assert site.client.post("/api/jobs", json={"text": ["no"], "account": CONSUMER}).json()["field"] == "text"
    assert site.client.post("/api/jobs", json={"text": "{}", "account": -1}).status_code == 400
    assert site.client.post("/api/jobs/1/cancel", json={}).json()["field"] == "account"


def test_concurrent_submissions_by_one_account_all_land(site: Site):
    lid = site.world.list_data(tabular(300, 8), budget=20.0, cap=1.0)
    text = _assembled(site, [lid])["text"]
    results: list = []

    def submit() -> None:
        results.append(_submit(site, text))

    threads = [threading.Thread(target=submit) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [201, 201, 201], [r.json() for r in results]
    assert sorted(r.json()["job_id"] for r in results) == [1, 2, 3]
    assert site.world.market.listing(lid).budget.reserved == 3 * 10**6


def test_an_appraised_job_shows_each_providers_value(site: Site):
    from sterling.sdk.consumer import upload_validation_set

    good = site.world.list_data(tabular(400, 21), provider=0)
    noisy = site.world.list_data(tabular(400, 22, noise=True), provider=1)
    doc = _assembled(site, [good, noisy])["job"]
    doc["evaluation"] = {
        "holdout_fraction": 0,
        "validation_uri": upload_validation_set(site.world.store, tabular(200, 23)),
        "metrics": ["accuracy", "auc"],
    }
    doc["release"] = {"appraisal_values": True, "appraisal_epsilon": 0.1}
    r = _submit(site, json.dumps(doc, indent=2))
    assert r.status_code == 201, r.json()
    (handled,) = site.world.worker.poll()
    assert handled.state == "completed", handled.reason
    result = site.client.get(f"/api/jobs/{r.json()['job_id']}").json()["result"]
    appraisal = result["appraisal"]
    assert appraisal["method"] != "row_share"
    assert set(appraisal["values"]) == {str(good), str(noisy)}
    assert all(isinstance(v, float) for v in appraisal["values"].values())
    assert set(appraisal["flagged"]) <= {good, noisy}
    assert result["metrics_private"] is False
    assert set(result["metrics"]) == {"accuracy", "auc"}


def test_stream_ends_when_the_client_goes_away(site: Site, listed):
    import anyio

    job_id = _submit(site, _assembled(site, [listed[0]])["text"]).json()["job_id"]
    app = site.client.app
    sent: list[dict] = []

    async def main() -> None:
        gone = anyio.Event()

        async def receive() -> dict:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                gone.set()  # the client leaves after the first event

        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": f"/api/jobs/{job_id}/stream",
            "raw_path": f"/api/jobs/{job_id}/stream".encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", ORIGIN.removeprefix("http://").encode()),
                        (b"authorization", f"token {TOKEN}".encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }  # fmt: skip
        with anyio.fail_after(60):  # a hang guard: a stream that outlived its client would never return
            await app(scope, receive, send)  # type: ignore[operator]

    anyio.run(main)
    assert sent[0]["status"] == 200
    assert b"event: progress" in sent[1]["body"]
    assert site.world.market.job(job_id).state is JobState.PENDING  # it ended for the client, not the job
