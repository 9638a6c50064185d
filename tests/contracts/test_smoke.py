from sterling.chain.types import JobState


def test_full_lifecycle_pays_provider_and_refunds_rest(live):
    lid = live.publish()
    jid = live.submit([lid], [1.0], value=10**17)
    live.m.claim_job(live.a.enclave, jid)
    live.complete(jid, payouts=[2 * 10**16], spent=[900_000])
    job = live.m.job(jid)
    assert job.state is JobState.COMPLETED
    assert live.m.balance_of(live.a.provider.address) == 2 * 10**16
    assert live.m.balance_of(live.a.consumer.address) == 8 * 10**16
    assert live.m.liabilities() == live.m.ether_balance() == 10**17
