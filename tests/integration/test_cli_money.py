"""The money commands as people run them, against anvil with a real (simulated) enclave worker.

`sterling account balance|withdraw` show and withdraw what settlement credited (a provider's
payout, a buyer's refund after `sterling job cancel`); `sterling provider derive` re-lists data
under new terms on the same budget, and a job on the derived listing trains and pays; `sterling
provider withdraw` takes a listing off sale. Every refusal is one line and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from enclave_world import tabular

from cli_world import (
    PROVIDERS,
    Procs,
    chain,
    job_file,
    publish_all,
    retarget,
    save_dataset,
    submit,
    worker,
)
from sterling.chain import node
from sterling.chain.deploy import Deployment
from sterling.chain.marketplace import Marketplace
from sterling.chain.units import to_micro
from sterling.sdk.manage import has_prediction_price

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


@dataclass
class Money:
    procs: Procs
    url: str
    state: Path
    market: Marketplace
    worker: Any
    listings: list[int]
    job: Path
    paid_job: int

    def args(self) -> list[str]:
        return ["--rpc-url", self.url, "--state", str(self.state)]

    def run(self, *args: str, check: bool = True) -> Any:
        out = self.procs.run(*args, *self.args(), "--format", "json", check=check)
        return json.loads(out.stdout) if check else out

    def refused(self, code: int, words: str, *args: str) -> None:
        """A command that must fail with exit `code` and one error line saying `words` (no traceback)."""
        out = self.procs.run(*args, *self.args(), check=False)
        assert "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith("error: ")
        assert words in lines[0]
        assert out.returncode == code, out.stderr

    def wait(self, job_id: int) -> dict[str, Any]:
        self.procs.run("job", "watch", str(job_id), *self.args(), "--format", "json", "--timeout", "240")
        return dict(self.run("job", "status", str(job_id)))

    def fee(self, tx_hashes: list[str]) -> int:
        """The gas the withdrawal's transactions cost its sender."""
        total = 0
        for tx in tx_hashes:
            receipt = self.market.chain.w3.eth.get_transaction_receipt(tx)  # type: ignore[arg-type]
            total += int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
        return total


@pytest.fixture(scope="module")
def money(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Money]:
    procs = Procs(tmp_path_factory.mktemp("money"))
    try:
        url, state = chain(procs, lease_seconds=60)
        proc, _ = worker(procs, url, state, "a")
        data = [save_dataset(procs, str(s), *_arrays(rows, s)) for rows, s in ((300, 1), (200, 2))]
        listings = publish_all(procs, url, state, [(data[0], PROVIDERS[0]), (data[1], PROVIDERS[1])])
        job = job_file(procs, [listings[0]], steps=10)
        market = Marketplace.at(node.connect(url), Deployment.load(state).marketplace)
        m = Money(procs, url, state, market, proc, listings, job, 0)
        m.paid_job = submit(procs, url, state, job)
        assert m.wait(m.paid_job)["state"] == "completed"
        yield m
    finally:
        procs.stop_all()


def _arrays(rows: int, seed: int) -> tuple[Any, Any]:
    ds = tabular(rows, seed)
    return ds.features, ds.labels


def test_a_provider_sees_its_payout_and_withdraws_it_to_the_wallet(money: Money):
    provider = money.market.chain.dev_accounts[int(PROVIDERS[0])].address
    payout = money.market.job(money.paid_job).allocations[0].payout
    assert payout == 1_000_000 + 2_000_000  # the price at ε 1: per job plus per ε
    shown = money.run("account", "balance", "--dev-account", PROVIDERS[0])
    assert shown["address"] == provider
    assert shown["balance_wei"] == payout
    assert shown["balance_eth"] == "0.000000000003"
    assert shown["ether_wei"] == money.market.chain.w3.eth.get_balance(provider)
    assert money.run("account", "balance", provider)["balance_wei"] == payout  # any address
    text = money.procs.run("account", "balance", "--dev-account", PROVIDERS[0], *money.args()).stdout
    assert "0.000000000003 ETH (3000000 wei)" in text
    assert "sterling account withdraw" in text

    before = money.market.chain.w3.eth.get_balance(provider)
    done = money.run("account", "withdraw", "--dev-account", PROVIDERS[0])
    assert (done["address"], done["withdrawn_wei"], done["balance_wei"]) == (provider, payout, 0)
    after = money.market.chain.w3.eth.get_balance(provider)
    assert after == before + payout - money.fee(done["tx_hashes"])
    assert done["ether_wei"] == after
    assert money.market.balance_of(provider) == 0

    # Nothing left: a clear refusal, and no transaction (no gas) spent on it.
    money.refused(2, "nothing to withdraw", "account", "withdraw", "--dev-account", PROVIDERS[0])
    assert money.market.chain.w3.eth.get_balance(provider) == after


def test_account_balance_refusals(money: Money):
    money.refused(2, "pass exactly one of --identity NAME or --dev-account N", "account", "balance")
    money.refused(2, "not an address", "account", "balance", "0x1234")
    money.refused(2, "not both", "account", "balance", "0x" + "ab" * 20, "--dev-account", "1")


def test_a_buyer_cancels_sees_the_refund_and_withdraws_it(money: Money):
    buyer = "4"
    address = money.market.chain.dev_accounts[int(buyer)].address
    os.kill(money.worker.pid, signal.SIGSTOP)  # idle between polls: the job stays pending
    try:
        job_id = submit(money.procs, money.url, money.state, money.job, dev=buyer)
        escrow = money.market.job(job_id).escrow
        out = money.procs.run("job", "cancel", str(job_id), "--dev-account", buyer, *money.args())
    finally:
        os.kill(money.worker.pid, signal.SIGCONT)
    assert f"its escrow of {escrow} wei is credited to your Marketplace balance" in out.stdout
    assert "withdraw it with `sterling account withdraw`" in out.stdout
    assert money.run("account", "balance", address)["balance_wei"] == escrow
    before = money.market.chain.w3.eth.get_balance(address)
    done = money.run("account", "withdraw", "--dev-account", buyer)
    assert done["withdrawn_wei"] == escrow
    assert money.market.chain.w3.eth.get_balance(address) == before + escrow - money.fee(done["tx_hashes"])
    assert money.market.balance_of(address) == 0


def test_derive_lists_the_data_again_under_new_terms_and_a_job_on_it_pays_those(money: Money):
    parent_id = money.listings[0]
    per_prediction = ["--price-per-prediction", "13"] if has_prediction_price() else []
    out = money.run(
        "provider", "derive", str(parent_id), "--dev-account", PROVIDERS[0],
        "--price-per-job", "7", "--price-per-epsilon", "11", "--max-epsilon", "1.5", *per_prediction,
    )  # fmt: skip
    child, parent = money.market.listing(out["listing_id"]), money.market.listing(parent_id)
    assert (out["parent"], child.parent) == (parent_id, parent_id)
    assert (child.provider, child.data_hash, child.data_uri) == (
        parent.provider,
        parent.data_hash,
        parent.data_uri,
    )
    assert (child.terms.price_per_job, child.terms.price_per_epsilon) == (7, 11)
    assert child.terms.max_epsilon_per_job == to_micro(1.5)
    assert child.terms.policy == parent.terms.policy
    assert child.contract_hash == parent.contract_hash
    if per_prediction:
        assert child.terms.price_per_prediction == 13  # type: ignore[attr-defined]
    assert child.open
    assert parent.open
    assert out["terms"]["price_per_job_wei"] == 7

    # The enclave finds everything it needs through the shared manifest: a job trains and pays.
    job_id = submit(money.procs, money.url, money.state, retarget(money.job, [child.id], "derived-job"))
    status = money.wait(job_id)
    assert status["state"] == "completed", status
    (alloc,) = status["allocations"]
    assert alloc["listing_id"] == child.id
    assert alloc["payout_wei"] == 7 + 11  # the derived listing's price at ε 1
    assert money.market.listing(parent_id).budget.spent == money.market.listing(child.id).budget.spent

    text = money.procs.run(
        "provider", "derive", str(parent_id), "--dev-account", PROVIDERS[0], *money.args()
    ).stdout
    assert f"from #{parent_id}" in text
    assert "same data and budget" in text


def test_derive_refusals(money: Money):
    a = money.listings[0]
    count = money.market.listing_count()
    derive = ["provider", "derive", str(a), "--dev-account", PROVIDERS[0]]
    money.refused(2, f"listing {a} is not yours", "provider", "derive", str(a), "--dev-account", PROVIDERS[1])
    money.refused(5, "no listing 99", "provider", "derive", "99", "--dev-account", PROVIDERS[0])
    money.refused(2, "exceeds the budget", *derive, "--max-epsilon-per-job", "9")
    money.refused(2, "is not a contract", *derive, "--policy", "0x" + "11" * 20)
    money.refused(2, "pinned measurement must be 32 bytes", *derive, "--pin-measurement", "abc")
    other = money.procs.tmp / "other_contract.py"
    other.write_text("def accept(request, host):\n    return True\n")
    money.refused(
        2, "can only run the provider contract its data's manifest names", *derive, "--contract", str(other)
    )
    money.refused(2, "not both", *derive, "--contract", str(other), "--no-contract")
    if not has_prediction_price():
        money.refused(2, "no price per prediction", *derive, "--price-per-prediction", "5")
    assert money.market.listing_count() == count


def test_provider_withdraw_takes_a_listing_off_sale_once(money: Money):
    a = money.listings[0]
    lid = money.run("provider", "derive", str(a), "--dev-account", PROVIDERS[0])["listing_id"]
    money.refused(
        2, f"listing {lid} is not yours", "provider", "withdraw", str(lid), "--dev-account", PROVIDERS[1]
    )
    money.refused(5, "no listing 99", "provider", "withdraw", "99", "--dev-account", PROVIDERS[0])

    out = money.run("provider", "withdraw", str(lid), "--dev-account", PROVIDERS[0])
    assert out == {"listing_id": lid, "active": False, "open": False}
    assert not money.market.is_open(lid)
    assert money.market.is_open(a)  # the parent stays on sale
    assert lid not in [x["id"] for x in money.run("listings", "--open")["items"]]
    money.refused(2, "already withdrawn", "provider", "withdraw", str(lid), "--dev-account", PROVIDERS[0])
