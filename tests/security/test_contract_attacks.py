"""Hostile provider and consumer contracts, run by the real worker in the real WebAssembly sandbox.

The contracts reach the world only through the host API (`ChainHost` on the
live chain). Each attack is submitted with a raw transaction, so the
consumer's client, which runs the same checks first, cannot stop it; the
enclave must.
"""

from __future__ import annotations

import pytest
from attackers import Arena, tabular

from sterling.enclave.host import ChainHost
from sterling.sdk.consumer import fetch_result, submit_job, upload_validation_set

RECURSES = "def down(n):\n    return down(n + 1)\n\ndef check(request):\n    return down(0)\n"
OVERSIZED = "def check(request):\n    return [12345678] * 10000\n"
FLOODS_THE_HOST = "def check(request):\n    while True:\n        job()\n"
#: A view that loops until its gas runs out: the contract's time is spent outside the sandbox.
BURNER = """# pragma version ~=0.4.3
@view
@external
def burn(n: uint256) -> uint256:
    x: uint256 = 0
    for i: uint256 in range(n, bound=100000000):
        x = unsafe_add(x, i)
    return x
"""
STALLS_IN_THE_CHAIN = """
def check(request):
    while True:
        try:
            chain_call(BURNER, 'burn(uint256)(uint256)', [10 ** 8])
        except RuntimeError:
            pass
"""


def test_provider_contracts_that_recurse_flood_the_host_or_return_too_much_fail_only_their_job(
    arena: Arena,
) -> None:
    consumer = arena.account()
    bad = {
        "raised": (RECURSES, "maximum recursion depth exceeded"),
        "oversized": (OVERSIZED, "returned more than 65536 bytes of JSON"),
        "fuel": (FLOODS_THE_HOST, "made more than 64 host calls"),
        "timeout": (
            f"BURNER = {arena.raw(arena.account()).deploy(BURNER)!r}\n" + STALLS_IN_THE_CHAIN,
            "ran longer than 1 s of wall-clock time",
        ),
    }
    jobs = {}
    for kind, (source, _) in bad.items():
        lid = arena.list_data(tabular(60, 1), arena.account(), contract=source)
        jobs[kind] = arena.hand_made(consumer, arena.job([lid]))
    good_listing = arena.list_data(tabular(150, 2), arena.account())
    good = submit_job(
        arena.market, consumer, arena.consumer_key, arena.job([good_listing]), arena.store, trust=arena.trust
    )
    handled = {h.job_id: h for h in arena.worker.poll()}
    for kind, (_, fragment) in bad.items():
        reason = arena.failed_reason(jobs[kind])
        assert handled[jobs[kind]].state == "failed"
        assert f"its contract failed: contract {kind}" in reason, reason
        assert fragment in reason, reason
        assert arena.market.job(jobs[kind]).allocations[0].spent == 0
    # Each view call is capped in gas, so the wall-clock limit is overrun by at most one short call
    # (uncapped, one call ran 20 s on the embedded EVM): the stalling job took a few seconds in all.
    assert handled[jobs["timeout"]].seconds < 15
    assert handled[good.job_id].state == "completed", handled[good.job_id].reason
    assert arena.market.balance_of(consumer.address) == sum(arena.market.job(j).escrow for j in jobs.values())


SNOOP = """
def check(request):
    seen = job()['evaluation']
    where = str(seen.get('validation_uri'))
    return {'accept': False, 'reason': 'saw ' + ','.join(sorted(seen)) + ' at ' + where}
"""


def test_a_provider_contract_cannot_publish_where_the_consumers_validation_set_is(arena: Arena) -> None:
    consumer = arena.account()
    lid = arena.list_data(tabular(60, 3), arena.account(), contract=SNOOP)
    uri = upload_validation_set(arena.store, tabular(50, 4))
    job = arena.job([lid], evaluation={"holdout_fraction": 0.0, "validation_uri": uri})
    job_id = arena.hand_made(consumer, job)
    arena.worker.poll()
    reason = arena.failed_reason(job_id)  # public: it is on chain for anyone to read
    assert uri.rsplit("/", 1)[-1] not in reason
    assert reason.endswith(
        "contract refused: saw checkpoint,holdout_fraction,metrics,metrics_epsilon at None"
    )


KEEP_SNOOPS = """
def keep(values):
    mine = job()
    assert listing() == {}
    assert 'contract' not in mine and 'validation_uri' not in mine['evaluation']
    count = chain_call(MARKET, 'job_count()(uint256)', [])
    provider = chain_call(MARKET, 'listing_provider(uint256)(address)', [1])
    return [count, provider, mine['id']]
"""


def test_a_consumer_contract_reaches_only_public_chain_state_through_the_host(arena: Arena) -> None:
    provider = arena.account()
    arena.list_data(tabular(60, 5), provider)
    source = f"MARKET = {arena.market.address!r}\n" + KEEP_SNOOPS
    # The very host the worker gives a consumer hook: the job's public view, no listing, view calls.
    job = arena.job([1], contract=source)
    host = ChainHost(arena.market, job={**job.public_view(), "id": 7}, listing={})
    seen = arena.worker.sandbox.call(source, "keep", {"1": 0.5}, host=host)
    assert seen == [arena.market.job_count(), arena.market.listing(1).provider.lower(), 7]


MISBEHAVING_KEEP = {
    "fuel": "def keep(values):\n    while True:\n        pass\n",
    "memory": "def keep(values):\n    x = []\n    while True:\n        x.append(bytearray(1 << 20))\n",
    "raised": "def down(n):\n    return down(n + 1)\n\ndef keep(values):\n    return down(0)\n",
    "oversized": "def keep(values):\n    return [12345678] * 10000\n",
}


@pytest.mark.parametrize("kind", sorted(MISBEHAVING_KEEP))
def test_a_consumer_contract_that_misbehaves_keeps_every_provider_and_the_job_completes(
    arena: Arena, kind: str
) -> None:
    consumer = arena.account()
    ids = [arena.list_data(tabular(150, s), arena.account()) for s in (5, 6)]
    validation = upload_validation_set(arena.store, tabular(80, 7))
    job = arena.job(
        ids,
        evaluation={"holdout_fraction": 0.0, "validation_uri": validation, "metrics": ["accuracy"]},
        release={"appraisal_values": True, "appraisal_epsilon": 0.2, "retrain_without_dropped": True},
        contract=MISBEHAVING_KEEP[kind],
    )
    submitted = submit_job(arena.market, consumer, arena.consumer_key, job, arena.store, trust=arena.trust)
    (handled,) = arena.worker.poll()
    assert handled.state == "completed", handled.reason
    expected = (
        f"job {submitted.job_id}: the consumer contract's keep() failed ({kind}); keeping every provider"
    )
    assert any(expected in line for line in arena.logs)
    bundle = fetch_result(arena.market, submitted.job_id, arena.consumer_key)
    assert bundle.info["appraisal"]["kept"] == ids
    chain_job = arena.market.job(submitted.job_id)
    assert [a.payout for a in chain_job.allocations] == [a.price for a in chain_job.allocations]
    assert all(0 < a.spent <= a.reserved for a in chain_job.allocations)
