"""`sterling bench market` on a small market: the JSON it prints, and the indexed and direct reads agree.

Runs the benchmark's machinery (anvil on loopback, listings published as raw signed transactions,
manifests in the blob store, job traffic, the index, the web app served by uvicorn) with 300
listings and 2,000 events, small enough that the direct read covers every listing. It asserts
what must hold whatever the machine: the structure, the counts, and that the index, the web API
and the chain say the same. It never asserts a timing.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from sterling.chain.node import start_anvil
from sterling.cli.bench import load

pytestmark = [pytest.mark.anvil, pytest.mark.slow]
bench = load("market")
LISTINGS, EVENTS = 300, 2_000
PAGE_KINDS = ("first", "search", "deep")


@pytest.fixture(scope="module")
def result(anvil_binary: Any) -> dict[str, Any]:
    out: dict[str, Any] = bench.run(listings=LISTINGS, events=EVENTS)
    return out


def test_the_json_has_every_figure_side_by_side(result):
    assert set(result) == {
        "sizes",
        "generate",
        "index",
        "market_page",
        "submission",
        "consistency",
        "seconds_total",
    }
    page = result["market_page"]
    for source in ("http", "index_api"):
        for kind in PAGE_KINDS:
            figures = page[source][kind]
            assert figures["n"] == bench.REPEATS
            assert 0 < figures["p50_ms"] <= figures["p95_ms"]
    assert page["goal_p95_ms"] == 100.0
    assert page["worst_p95_ms"] == max(page["http"][k]["p95_ms"] for k in PAGE_KINDS)
    assert result["index"]["goal_events_per_second"] == 2_000.0
    for history in ("small_history", "large_history"):
        for path in ("indexed", "direct"):
            assert result["submission"][history][path]["rpc_calls"] > 0


def test_the_market_is_as_big_as_asked_and_its_events_add_up(result):
    sizes = result["sizes"]
    assert sizes["listings"] == LISTINGS
    assert sizes["events"] >= EVENTS
    assert sum(sizes["event_sources"].values()) == sizes["events"]
    publish = sizes["event_sources"]["publish: BudgetCreated + ListingPublished"]
    assert publish == 2 * LISTINGS
    # The index followed every event the chain's receipts carried, and read every manifest.
    assert result["index"]["events"] == sizes["events"]
    assert result["index"]["manifests_read"] == LISTINGS


def test_the_direct_read_covered_every_listing_at_three_calls_each(result):
    direct = result["market_page"]["direct"]
    assert direct["listings_read"] == direct["total"] == LISTINGS
    assert direct["market_page_extrapolated"] is False
    assert direct["rpc_calls"] == 3 * LISTINGS
    assert direct["manifests_read"] == LISTINGS


def test_indexed_and_direct_reads_agree(result):
    checks = result["consistency"]
    assert checks == {
        "total": True,
        "search_total_as_published": True,
        "first_page": True,
        "search_total": True,
        "all": True,
    }
    page = result["market_page"]
    for source in ("http", "index_api"):
        assert page[source]["first"]["total"] == page[source]["deep"]["total"] == LISTINGS
        assert page[source]["search"]["total"] == page["direct"]["search_total"] > 0
        assert page[source]["first"]["items"] == bench.PER_PAGE


def test_a_submission_through_the_index_makes_as_many_calls_at_any_history(result):
    sub = result["submission"]
    small, large = sub["small_history"], sub["large_history"]
    assert large["history_events"] > 10 * small["history_events"]
    assert large["indexed"]["rpc_calls"] == small["indexed"]["rpc_calls"]
    assert sub["large_over_small"]["indexed"]["calls"] == 1.0


def test_the_generator_signs_exactly_as_eth_account_does(anvil_binary):
    """The bulk signer checks itself against eth-account; anvil then mines what it signed."""
    world_mod = bench.world_mod
    chain = start_anvil(anvil_binary)
    try:
        rpc = world_mod.Rpc(chain.rpc_url)
        sender = world_mod.Sender(chain.dev_accounts[1], 0, 10**10, chain.chain_id)
        raws = [sender.sign(chain.dev_accounts[2].address, b"", 21_000, value=v) for v in (1, 2)]
        assert sender.checked
        assert sender.nonce == 2
        hashes = [rpc.call("eth_sendRawTransaction", [raw]) for raw in raws]
        # anvil mines each on arrival, but may answer before the block is in: wait for the receipts.
        receipts = [chain.w3.eth.wait_for_transaction_receipt(h, timeout=60) for h in hashes]
        assert [r["status"] for r in receipts] == [1, 1]
        assert int(rpc.call("eth_getTransactionCount", [chain.dev_accounts[1].address, "latest"]), 16) == 2
        rpc.close()
    finally:
        chain.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["market", "--listings", "2"], "--listings must be at least 4"),
        (["market", "--events", "-1"], "--events must be ≥ 0"),
        (["crypto", "--listings", "10"], "benchmark 'crypto' does not take --listings"),
    ],
)
def test_bad_sizes_are_refused_in_one_line(args, message):
    done = subprocess.run(
        [sys.executable, "-m", "sterling.cli", "bench", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
