"""A pool on the deployed test Marketplace: contributors, a job over the pool, its payout tree."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from sterling.chain.merkle import PayoutTree
from sterling.chain.pools import Pools
from sterling.chain.types import Terms
from sterling.chain.units import to_delta, to_micro

ETH = 10**18


@dataclass
class PoolMarket:
    market: Any  # conftest.Market
    pools: Pools
    listing_id: int
    contributors: list[LocalAccount] = field(default_factory=list)

    @property
    def m(self):  # type: ignore[no-untyped-def]
        return self.market.m

    def contributor(self) -> LocalAccount:
        account: LocalAccount = Account.create()
        self.market.chain.fund(account.address, ETH // 10)
        self.contributors.append(account)
        return account

    def join(self, account: LocalAccount | None = None, *, cap: float = 3.0) -> int:
        account = account or self.contributor()
        return self.pools.join(
            account,
            self.listing_id,
            uri=f"memory://record/{os.urandom(4).hex()}",
            data_hash=os.urandom(32),
            sealed_key=os.urandom(80),
            cap=to_micro(cap),
        )

    def submit(self, epsilon: float = 1.0, *, value: int | None = None) -> int:
        return self.market.submit([self.listing_id], [epsilon], value=value)

    def claim_job(self, job_id: int) -> None:
        self.m.claim_job(self.market.a.enclave, job_id)

    def settle(
        self,
        job_id: int,
        tree: PayoutTree | None,
        *,
        payout: int,
        spent: int,
        finalize: bool = True,
    ) -> dict[str, int]:
        """Commit `tree` (if any), complete the job paying the pool `payout`, finalize; gas of each."""
        gas: dict[str, int] = {}
        enclave = self.market.a.enclave
        if tree is not None:
            r = self.pools.commit_payouts(
                enclave,
                job_id,
                self.listing_id,
                root=tree.root,
                total=tree.total,
                tree_uri="memory://t/" + "a" * 64,
            )
            gas["commit"] = int(r["gasUsed"])
        r = self.market.complete(job_id, payouts=[payout], spent=[spent])
        gas["complete"] = int(r["gasUsed"])
        if finalize:
            r = self.pools.finalize(self.market.a.outsider, job_id, self.listing_id)
            gas["finalize"] = int(r["gasUsed"])
        return gas


def make_pool(
    market: Any, *, budget: float = 10.0, cap: float = 2.0, price_per_job: int = ETH // 100
) -> PoolMarket:
    pools = Pools.deploy(market.chain, market.a.admin, marketplace=market.m.address)
    terms = Terms(price_per_job, 10**16, to_micro(cap))
    listing_id = pools.create_pool(
        market.a.provider,
        data_uri=f"memory://pool/{os.urandom(4).hex()}",
        data_hash=os.urandom(32),
        terms=terms,
        epsilon_budget=to_micro(budget),
        delta=to_delta(1e-5),
    )
    return PoolMarket(market, pools, listing_id)
