"""Gas per state-changing call of Sterling's contracts, and transactions per second through its client.

Run: `sterling bench chain --format json`.

Both chains run the same workload in one run: deploy, register an enclave,
publish, then N job lifecycles (submit → claim → complete), every
transaction signed locally and waited for by `Transactor`. Gas comes from
the receipts on the embedded chain (the same EVM rules as anvil): every
deployment (EnclaveRegistry, Marketplace, PredictionFees, bind, the
policies) and every state-changing function, each measured on its own.
Pools too: joining, and settling a pooled job with a tree of 10 and of
10,000 leaves from the same state (commit + complete + finalize, which
must not grow with the tree), and claims from the 10,000-leaf tree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from rich.table import Table

from sterling.chain import digests, node
from sterling.chain.fees import PredictionFees
from sterling.chain.marketplace import AllowListPolicy, CredentialPolicy, Marketplace
from sterling.chain.merkle import PayoutTree
from sterling.chain.node import Chain
from sterling.chain.pools import Pools
from sterling.chain.registry import EnclaveRegistry
from sterling.chain.types import Terms
from sterling.config import Settings

MEASUREMENT = bytes.fromhex("ab" * 32)
HPKE = bytes.fromhex("cd" * 32)


class _Gas:
    """Records the gas of every mined transaction under the current label."""

    def __init__(self, chain: Chain) -> None:
        self.used: dict[str, int] = {}
        self.label = ""
        chain.transactor.observers.append(self._observe)

    def _observe(self, function: str, receipt: Any) -> None:
        if self.label:
            self.used[self.label] = int(receipt["gasUsed"])

    def measure(self, label: str, thunk: Callable[[], Any]) -> Any:
        self.label = label
        try:
            return thunk()
        finally:
            self.label = ""


def _setup(chain: Chain, gas: _Gas | None = None) -> tuple[Marketplace, list[int], dict[str, Any]]:
    g = gas or _Gas(chain)
    admin, platform, enclave, provider, consumer, issuer = chain.dev_accounts[:6]
    m = _deploy(chain, admin, platform.address, g)
    g.measure("allow_measurement", lambda: m.allow_measurement(admin, MEASUREMENT))
    chain.advance_time(m.change_delay())
    att = digests.sign_digest(
        platform, m.attestation_digest(measurement=MEASUREMENT, enclave=enclave.address, hpke_public_key=HPKE)
    )
    g.measure(
        "register_enclave",
        lambda: m.register_enclave(enclave, measurement=MEASUREMENT, hpke_public_key=HPKE, attestation=att),
    )
    terms = Terms(10**15, 10**16, 1_000_000, price_per_prediction=10**9)
    listings = [
        g.measure(
            "publish",
            lambda i=i: m.publish(
                provider,
                data_uri=f"file:///data/{i}",
                data_hash=os.urandom(32),
                sealed_key=os.urandom(80),
                terms=terms,
                epsilon_budget=10**12,
                delta=10**13,
            ),
        )
        for i in range(4)
    ]
    ctx = {"admin": admin, "enclave": enclave, "provider": provider, "consumer": consumer, "issuer": issuer}
    return m, listings, ctx


def _deploy(chain: Chain, admin: Any, signer: str, g: _Gas) -> Marketplace:
    """`Marketplace.deploy`'s four transactions, each measured (the same steps, one at a time)."""
    registry = g.measure(
        "deploy EnclaveRegistry", lambda: EnclaveRegistry.deploy(chain, admin, attestation_signer=signer)
    )
    receipt = g.measure(
        "deploy Marketplace", lambda: Marketplace._deploy(chain, admin, registry.address, 900)
    )
    m = Marketplace(chain, str(receipt["contractAddress"]))
    fees = g.measure(
        "deploy PredictionFees", lambda: PredictionFees.deploy(chain, admin, marketplace=m.address)
    )
    g.measure(
        "registry.bind", lambda: registry.bind(admin, marketplace=m.address, prediction_fees=fees.address)
    )
    return m


def _lifecycle(m: Marketplace, listings: list[int], ctx: dict[str, Any], g: _Gas | None, n: int) -> int:
    """Run one job lifecycle; returns the number of transactions sent."""
    consumer, enclave = ctx["consumer"], ctx["enclave"]
    ids = listings[:n]

    def measure(label: str, thunk: Callable[[], Any]) -> Any:
        return g.measure(label, thunk) if g else thunk()

    jid = measure(
        f"submit_job[{n}]",
        lambda: m.submit_job(
            consumer,
            listing_ids=ids,
            epsilons=[500_000] * n,
            max_prices=[10**17] * n,
            delta=10**13,
            consumer_key=HPKE,
            job_hash=os.urandom(32),
            job_uri="file:///job",
            value=10**17,
        ),
    )
    measure(f"claim_job[{n}]", lambda: m.claim_job(enclave, jid))
    measure(
        f"complete_job[{n}]",
        lambda: m.complete_job(
            enclave,
            jid,
            result_hash=os.urandom(32),
            model_uri="file:///model",
            sealed_model_key=os.urandom(80),
            payouts=[10**15] * n,
            spent=[400_000] * n,
            weights=[1] * n,
            receipt_hash=os.urandom(32),
            receipt_uri="file:///receipt",
        ),
    )
    return 3


def gas_table(chain: Chain) -> dict[str, int]:
    """Gas used by every Marketplace and policy call, on a fresh deployment."""
    g = _Gas(chain)
    m, listings, ctx = _setup(chain, g)
    enclave, provider, consumer, issuer = (ctx[k] for k in ("enclave", "provider", "consumer", "issuer"))
    for n in (1, 4):
        _lifecycle(m, listings, ctx, g, n)
    g.measure("derive", lambda: m.derive(provider, listings[0], terms=Terms(0, 10**16, 500_000)))
    g.measure("withdraw_listing", lambda: m.withdraw_listing(provider, listings[3]))

    def submit() -> int:
        return m.submit_job(
            consumer,
            listing_ids=[listings[0]],
            epsilons=[100_000],
            max_prices=[10**16],
            delta=10**13,
            consumer_key=HPKE,
            job_hash=os.urandom(32),
            job_uri="file:///job",
            value=10**16,
        )

    jid = submit()
    g.measure("cancel_job", lambda: m.cancel_job(consumer, jid))
    jid = submit()
    m.claim_job(enclave, jid)
    g.measure("extend_lease", lambda: m.extend_lease(enclave, jid))
    g.measure(
        "report_progress",
        lambda: m.report_progress(enclave, jid, step=100, steps=1000, micro_epsilon=250_000),
    )
    g.measure("fail_job", lambda: m.fail_job(enclave, jid, reason="verifier: epsilon above cap"))
    jid = submit()
    m.claim_job(enclave, jid)
    g.measure(
        "fail_job charged",
        lambda: m.fail_job(
            enclave,
            jid,
            reason="failed after training began",
            spent=[50_000],
            receipt_hash=os.urandom(32),
            receipt_uri="file:///receipt",
        ),
    )
    g.measure("pay_for_predictions[4]", lambda: m.pay_for_predictions(consumer, 2, count=100, value=10**15))
    weights = [4, 3, 2, 1]
    batch = os.urandom(32)
    digest = m.predictions_digest(2, payer=consumer.address, count=100, batch_hash=batch, weights=weights)
    g.measure(
        "pay_for_attributed_predictions[4]",
        lambda: m.pay_for_attributed_predictions(
            consumer,
            2,
            count=100,
            batch_hash=batch,
            weights=weights,
            enclave=enclave.address,
            signature=digests.sign_digest(enclave, digest),
            value=10**15,
        ),
    )
    g.measure("withdraw (PredictionFees)", lambda: m.fees.withdraw(provider))
    g.measure("withdraw (Marketplace)", lambda: m.withdraw(provider))  # what is left: the Marketplace's
    jid = submit()
    m.claim_job(enclave, jid)
    g.measure("revoke_enclave", lambda: m.revoke_enclave(ctx["admin"], enclave.address))
    g.measure("expire_job (revoked enclave, back to the pool)", lambda: m.expire_job(provider, jid))
    chain.advance_time(m.max_pending_seconds() + 1)
    g.measure("expire_job (unclaimed, refunded)", lambda: m.expire_job(provider, jid))
    g.measure("set_lease_seconds", lambda: m.set_lease_seconds(ctx["admin"], 600))
    g.measure("set_attestation_signer", lambda: m.set_attestation_signer(ctx["admin"], issuer.address))
    g.measure("revoke_measurement", lambda: m.allow_measurement(ctx["admin"], MEASUREMENT, allowed=False))
    g.measure("transfer_admin", lambda: m.transfer_admin(ctx["admin"], issuer.address))
    allow = g.measure(
        "deploy AllowListPolicy", lambda: AllowListPolicy.deploy(chain, provider, marketplace=m.address)
    )
    g.measure("allowlist.set_allowed", lambda: allow.set_allowed(provider, consumer.address))
    cred = g.measure(
        "deploy CredentialPolicy",
        lambda: CredentialPolicy.deploy(chain, provider, marketplace=m.address, issuer=issuer.address),
    )
    g.measure("credential.grant", lambda: cred.grant(issuer, consumer.address, expires=chain.now() + 86400))
    return dict(sorted(g.used.items()))


def _pool_settlement(
    m: Marketplace, pools: Pools, lid: int, ctx: dict[str, Any], g: _Gas, leaves: int, members: list[str]
) -> tuple[int, PayoutTree]:
    """A job over the pool settled with a tree of `leaves` leaves (`members` first, then made-up
    accounts): commit, complete and finalize, each measured under `pool ...[leaves]`."""
    consumer, enclave = ctx["consumer"], ctx["enclave"]
    jid = m.submit_job(
        consumer,
        listing_ids=[lid],
        epsilons=[500_000],
        max_prices=[10**17],
        delta=10**13,
        consumer_key=HPKE,
        job_hash=os.urandom(32),
        job_uri="file:///job",
        value=10**17,
    )
    m.claim_job(enclave, jid)
    payout = 10**15
    accounts = members + [f"0x{i + 1:040x}" for i in range(leaves - len(members))]
    payees = [(a, payout // leaves) for a in accounts]
    tree = PayoutTree.build(job_id=jid, listing_id=lid, payees=payees)
    g.measure(
        f"pool commit_payouts[{leaves}]",
        lambda: pools.commit_payouts(
            enclave, jid, lid, root=tree.root, total=tree.total, tree_uri="file:///tree/" + "ab" * 32
        ),
    )
    g.measure(
        f"pool complete_job[{leaves}]",
        lambda: m.complete_job(
            enclave,
            jid,
            result_hash=os.urandom(32),
            model_uri="file:///model",
            sealed_model_key=os.urandom(80),
            payouts=[payout],
            spent=[400_000],
            weights=[1],
            receipt_hash=os.urandom(32),
            receipt_uri="file:///receipt",
        ),
    )
    g.measure(f"pool finalize[{leaves}]", lambda: pools.finalize(consumer, jid, lid))
    return jid, tree


def pool_gas(chain: Chain) -> dict[str, Any]:
    """Gas of a pool: joining, and settling a job over 10 and 10,000 contributors from the same
    state (commit + complete + finalize), then claims from the 10,000-leaf tree."""
    g = _Gas(chain)
    m, _, ctx = _setup(chain)
    admin, provider = ctx["admin"], ctx["provider"]
    pools = g.measure("deploy Pools", lambda: Pools.deploy(chain, admin, marketplace=m.address))
    lid = g.measure(
        "pool create_pool",
        lambda: pools.create_pool(
            provider,
            data_uri="file:///pool-manifest",
            data_hash=os.urandom(32),
            terms=Terms(10**15, 10**16, 1_000_000),
            epsilon_budget=10**12,
            delta=10**13,
        ),
    )
    members = chain.dev_accounts[6:9]
    for i, who in enumerate(members):
        g.measure(
            f"pool join (member {i})",
            lambda who=who: pools.join(
                who,
                lid,
                uri="file:///record/" + "cd" * 32,
                data_hash=os.urandom(32),
                sealed_key=os.urandom(80),
                cap=10**6,
            ),
        )
    g.measure("pool leave", lambda: pools.leave(members[2], lid))
    snap = chain.snapshot()
    joined = [who.address for who in members[:2]]
    _pool_settlement(m, pools, lid, ctx, g, 10, joined)
    chain.revert(snap)
    jid, tree = _pool_settlement(m, pools, lid, ctx, g, 10_000, joined)
    caller = members[0]
    for label, position in (
        ("pool claim[10000] (first in its bitmap word)", 0),
        ("pool claim[10000] (a later one in the word)", 1),
    ):
        leaf, proof = tree.leaves[position], tree.proof(position)
        g.measure(
            label,
            lambda leaf=leaf, proof=proof: pools.claim(
                caller, jid, lid, index=leaf.index, account=leaf.account, amount=leaf.amount, proof=proof
            ),
        )
    g.measure("pool withdraw", lambda: pools.withdraw(members[0]))
    used = g.used
    settle = {
        n: sum(used[f"pool {step}[{n}]"] for step in ("commit_payouts", "complete_job", "finalize"))
        for n in (10, 10_000)
    }
    return {
        "gas": dict(sorted(used.items())),
        "settle_10_leaves": settle[10],
        "settle_10000_leaves": settle[10_000],
        "proof_length_10000": len(tree.proof(0)),
    }


def throughput(chain: Chain, jobs: int) -> dict[str, float]:
    m, listings, ctx = _setup(chain)
    txs = 0
    start = time.perf_counter()
    for _ in range(jobs):
        txs += _lifecycle(m, listings, ctx, None, 1)
    seconds = time.perf_counter() - start
    return {"tx_per_s": round(txs / seconds, 2), "txs": txs, "seconds": round(seconds, 3)}


def run(*, quick: bool = False) -> dict[str, Any]:
    jobs = 10 if quick else 60
    embedded = node.embedded()
    gas = gas_table(embedded)
    pooled = pool_gas(node.embedded())
    emb = throughput(node.embedded(), jobs)
    anvil_chain = node.start_anvil(Settings.from_env().require_anvil())
    try:
        anv = throughput(anvil_chain, jobs)
    finally:
        anvil_chain.close()
    return {
        "embedded": emb,
        "anvil": anv,
        "anvil_over_embedded": round(anv["tx_per_s"] / emb["tx_per_s"], 3),
        "jobs": jobs,
        "gas": gas,
        "pools": pooled,
    }


def table(result: dict[str, Any]) -> Table:
    t = Table(title="Sterling's contracts: throughput (job lifecycles, 3 tx each) and gas per call")
    t.add_column("figure")
    t.add_column("embedded (py-evm)", justify="right")
    t.add_column("anvil (loopback)", justify="right")
    t.add_column("ratio", justify="right")
    e, a = result["embedded"], result["anvil"]
    t.add_row("tx/s", f"{e['tx_per_s']:.1f}", f"{a['tx_per_s']:.1f}", f"{result['anvil_over_embedded']:.2f}")
    t.add_row("seconds", f"{e['seconds']:.2f}", f"{a['seconds']:.2f}", "")
    for call, used in result["gas"].items():
        t.add_row(f"gas: {call}", f"{used:,}", "", "")
    pooled = result["pools"]
    for call, used in pooled["gas"].items():
        t.add_row(f"gas: {call}", f"{used:,}", "", "")
    t.add_row(
        "gas: pool settlement, 10 vs 10,000 leaves",
        f"{pooled['settle_10_leaves']:,}",
        f"{pooled['settle_10000_leaves']:,}",
        f"{pooled['settle_10000_leaves'] / pooled['settle_10_leaves']:.4f}",
    )
    return t
