"""The explorer: blocks, transactions decoded to Marketplace functions, events, enclaves; chain down → 502."""

from __future__ import annotations

from fastapi.testclient import TestClient
from web3 import Web3
from web3.providers.rpc import HTTPProvider
from webworld import CONSUMER, ORIGIN, TOKEN, Site

from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain, free_port
from sterling.chain.tx import Transactor
from sterling.web.app import create_app
from sterling.web.context import WebContext


def test_blocks_newest_first_and_paged(site: Site, listed):
    latest = site.world.chain.w3.eth.block_number
    rows = site.client.get("/api/explorer/blocks", params={"limit": 3}).json()
    assert [b["number"] for b in rows] == [latest, latest - 1, latest - 2]
    assert rows[0]["tx_count"] == 1
    assert rows[0]["gas_used"] > 0
    assert rows[0]["hash"].startswith("0x")
    older = site.client.get("/api/explorer/blocks", params={"limit": 2, "before": latest - 2}).json()
    assert [b["number"] for b in older] == [latest - 3, latest - 4]
    assert site.client.get("/api/explorer/blocks", params={"limit": 0}).status_code == 400


def test_a_block_and_its_transactions_decoded(site: Site, listed):
    _a, _b = listed
    publish_block = site.world.chain.w3.eth.block_number  # listing b was the last transaction
    doc = site.client.get(f"/api/explorer/blocks/{publish_block}").json()
    (tx,) = doc["transactions"]
    assert tx["function"] == "publish"
    assert tx["status"] == 1
    assert tx["block"] == publish_block
    assert tx["from"] == site.world.providers[1].address
    assert tx["to"] == site.world.market.address
    assert tx["value_wei"] == "0"
    assert tx["gas_used"] > 0
    r = site.client.get("/api/explorer/blocks/99999")
    assert r.status_code == 404
    assert "no block 99999" in r.json()["error"]


def test_transactions_and_one_transaction_with_its_events(site: Site, listed):
    a, _ = listed
    assemble = site.client.post(
        "/api/assemble", json={"listing_ids": [a], "family": "mlp", "account": CONSUMER}
    )
    job_id = site.client.post(
        "/api/jobs", json={"text": assemble.json()["text"], "account": CONSUMER}
    ).json()["job_id"]
    txs = site.client.get("/api/explorer/transactions", params={"limit": 5}).json()
    assert txs["pending"] == []  # py-evm mines every transaction at once
    newest = txs["mined"][0]
    assert newest["function"] == "submit_job"
    assert int(newest["value_wei"]) == site.world.market.job(job_id).escrow
    assert [t["function"] for t in txs["mined"]][1:3] == ["publish", "publish"]
    doc = site.client.get(f"/api/explorer/transactions/{newest['hash']}").json()
    assert {e["name"] for e in doc["events"]} == {"JobSubmitted", "EpsilonReserved"}
    submitted = next(e for e in doc["events"] if e["name"] == "JobSubmitted")
    assert submitted["args"]["job_id"] == job_id
    assert submitted["args"]["consumer"] == site.world.consumer.address
    assert submitted["args"]["job_hash"].startswith("0x")  # bytes as hex
    assert submitted["args"]["escrow"] == str(site.world.market.job(job_id).escrow)  # past 2^53: a string
    r = site.client.get("/api/explorer/transactions/0x" + "ab" * 32)
    assert r.status_code == 404
    r = site.client.get("/api/explorer/transactions/nothex")
    assert r.status_code == 400
    assert "32 bytes of hex" in r.json()["error"]


def test_events_newest_first_and_filtered(site: Site, listed):
    a, b = listed
    all_events = site.client.get("/api/explorer/events", params={"per_page": 200}).json()["items"]
    names = [e["name"] for e in all_events]
    assert names[0] == "ListingPublished"
    assert names[-1] == "AdminChanged"
    blocks = [e["block"] for e in all_events]
    assert blocks == sorted(blocks, reverse=True)
    published = site.client.get("/api/explorer/events", params={"name": "ListingPublished"}).json()["items"]
    assert [e["args"]["listing_id"] for e in published] == [b, a]
    only_a = site.client.get("/api/explorer/events", params={"listing_id": a}).json()["items"]
    assert {e["name"] for e in only_a} == {"ListingPublished"}
    assert len(only_a) == 1
    assert len(site.client.get("/api/explorer/events", params={"limit": 2}).json()["items"]) == 2
    assert site.client.get("/api/explorer/events", params={"job_id": 3}).json()["items"] == []
    assert site.client.get("/api/explorer/events", params={"job_id": "x"}).json()["field"] == "job_id"


def test_enclaves_with_measurement_and_simulated(site: Site):
    (enclave,) = site.client.get("/api/enclaves").json()
    w = site.world.worker
    assert enclave["address"] == w.address
    assert enclave["registered"] is True
    assert enclave["simulated"] is True
    assert enclave["measurement"] == "0x" + w.tee.measurement().hex()
    assert enclave["hpke_public_key"] == "0x" + w.keys.public_key.hex()


def test_an_unreachable_node_is_502_not_a_traceback(site: Site):
    url = f"http://127.0.0.1:{free_port()}"
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 2}), middleware=[])
    chain = Chain("rpc", w3, 1, url, [], Transactor(w3, chain_id=1))
    context = WebContext(
        market=Marketplace(chain, site.world.market.address),
        store=site.world.store,
        state_dir=site.world.state,
    )
    app = create_app(context, static_dir=site.world.state / "static", token=TOKEN)
    with TestClient(app, base_url=ORIGIN, headers={"Authorization": f"token {TOKEN}"}) as client:
        for path in ("/api/status", "/api/listings", "/api/explorer/blocks"):
            r = client.get(path)
            assert r.status_code == 502, path
            assert r.json()["error"].startswith("the chain node cannot be reached")
        r = client.post("/api/verify", json={"text": "{}", "account": 0})
        assert r.status_code == 400
        assert "no development accounts" in r.json()["error"]
