"""Escrow conservation under random sequences of operations (hypothesis, embedded EVM).

Whatever consumers, enclaves and providers do, and whichever of their calls
revert: the contract's ether equals its recorded liabilities, which equal the
credited balances plus the escrow of open jobs; nothing is paid out that was
not paid in; no data's budget is overspent, and what it has spent is exactly
what settled and failed jobs charged it.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sterling.chain import digests, node
from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState, Terms
from sterling.errors import ContractRevert

MEASUREMENT = bytes.fromhex("aa" * 32)
HPKE = bytes.fromhex("bb" * 32)


@pytest.fixture(scope="module")
def world():
    chain = node.embedded()
    admin, platform, enclave, p1, p2, c1, c2 = chain.dev_accounts[:7]
    m = Marketplace.deploy(
        chain, admin, attestation_signer=platform.address, lease_seconds=600, measurements=[MEASUREMENT]
    )
    att = digests.sign_digest(
        platform, m.attestation_digest(measurement=MEASUREMENT, enclave=enclave.address, hpke_public_key=HPKE)
    )
    m.register_enclave(enclave, measurement=MEASUREMENT, hpke_public_key=HPKE, attestation=att)
    lids = [
        m.publish(p, data_uri="memory://d", data_hash=os.urandom(32), sealed_key=b"k" * 80,
                  terms=Terms(10**6, 10**9, 2_000_000), epsilon_budget=3_000_000, delta=10**13)
        for p in (p1, p2)
    ]  # fmt: skip
    lids.append(m.derive(p1, lids[0], terms=Terms(0, 5 * 10**8, 1_000_000)))
    return chain, m, enclave, [p1, p2], [c1, c2], lids


operation = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 1), st.lists(st.integers(0, 2), min_size=1, max_size=3),
              st.integers(1, 2_500_000), st.integers(0, 10**9)),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("claim"), st.integers(0, 5)),
    st.tuples(st.just("complete"), st.integers(0, 5), st.integers(0, 110), st.integers(0, 110)),
    st.tuples(st.just("fail"), st.integers(0, 5)),
    st.tuples(st.just("fail charged"), st.integers(0, 5), st.integers(0, 110), st.booleans()),
    st.tuples(st.just("predict"), st.integers(0, 5), st.integers(1, 10**12)),
    st.tuples(st.just("withdraw"), st.integers(0, 3)),
    st.tuples(st.just("expire"), st.integers(0, 5)),
)  # fmt: skip


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(operation, min_size=1, max_size=10))
def test_escrow_is_conserved(world, ops):
    chain, m, enclave, providers, consumers, lids = world
    snap = chain.snapshot()
    people = [*providers, *consumers]
    paid_in = withdrawn = 0
    start_ether = m.ether_balance()
    owner = {lid: m.listing(lid).data_hash for lid in lids}  # listing -> the data whose budget it draws on
    data_hashes = set(owner.values())
    try:
        for op in ops:
            jobs = m.job_count()
            try:
                if op[0] == "submit":
                    _, who, picks, eps, extra = op
                    ids = sorted(set(lids[i] for i in picks))
                    epsilons = [eps] * len(ids)
                    value = sum(m.quote(consumers[who].address, i, eps) for i in ids) + extra
                    m.submit_job(
                        consumers[who], listing_ids=ids, epsilons=epsilons, delta=10**13,
                        consumer_key=HPKE, job_hash=os.urandom(32), job_uri="j", value=value,
                    )  # fmt: skip
                    paid_in += value
                elif op[0] != "withdraw" and jobs:  # every other operation acts on a job
                    jid = op[1] % jobs + 1
                    job = m.job(jid)
                    if op[0] == "cancel":
                        m.cancel_job(
                            consumers[0] if job.consumer == consumers[0].address else consumers[1], jid
                        )
                    elif op[0] == "claim":
                        m.claim_job(enclave, jid)
                    elif op[0] == "complete":
                        n = len(job.allocations)
                        payouts = [job.escrow * op[2] // 100 // n] * n
                        spent = [a.reserved * op[3] // 100 for a in job.allocations]
                        m.complete_job(
                            enclave, jid, result_hash=os.urandom(32), model_uri="m",
                            sealed_model_key=b"s", payouts=payouts, spent=spent, weights=[1] * n,
                            receipt_hash=os.urandom(32), receipt_uri="r",
                        )  # fmt: skip
                    elif op[0] == "fail":
                        m.fail_job(enclave, jid, reason="test")
                    elif op[0] == "fail charged":  # part of the reservation (above it: refused)
                        spent = [a.reserved * op[2] // 100 for a in job.allocations]
                        if op[3]:
                            spent.append(0)  # one figure too many: refused
                        m.fail_job(enclave, jid, reason="test", spent=spent, receipt_hash=os.urandom(32))
                    elif op[0] == "predict":
                        m.pay_for_predictions(consumers[1], jid, count=1, value=op[2])
                        paid_in += op[2]
                    else:
                        chain.advance_time(601)
                        m.expire_job(consumers[0], jid)
                elif op[0] == "withdraw":
                    withdrawn += m.withdraw(people[op[1]])
            except ContractRevert:
                pass  # refused operations must leave the invariants intact too
            ether = m.ether_balance()
            assert ether == m.liabilities()
            assert ether == start_ether + paid_in - withdrawn
            all_jobs = list(m.jobs())
            open_jobs = [j for j in all_jobs if j.state in (JobState.PENDING, JobState.CLAIMED)]
            charged = [j for j in all_jobs if j.state in (JobState.COMPLETED, JobState.FAILED)]
            assert ether == sum(j.escrow for j in open_jobs) + sum(m.balance_of(p.address) for p in people)
            for data_hash in data_hashes:
                budget = m.budget(data_hash)
                assert budget.spent + budget.reserved <= budget.total
                reserved = sum(
                    a.reserved for j in open_jobs for a in j.allocations if owner[a.listing_id] == data_hash
                )
                assert budget.reserved == reserved
                spent = sum(
                    a.spent for j in charged for a in j.allocations if owner[a.listing_id] == data_hash
                )
                assert budget.spent == spent
    finally:
        chain.revert(snap)
