"""Pool payouts by Merkle proof: the Python tree matches the contract, nothing is paid twice, the
claims never pass what the job paid the pool, any wallet withdraws, and settlement gas does not
grow with the tree."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pooling import ETH, PoolMarket, make_pool
from test_withdrawals import _deploy, _fund

from sterling.chain.merkle import Leaf, PayoutTree, hash_pair, verify
from sterling.errors import ContractRevert, IntegrityError, UsageError


def _addr() -> str:
    return str(Account.create().address)


@pytest.fixture
def pool(live) -> PoolMarket:  # type: ignore[no-untyped-def]
    return make_pool(live)


# ------------------------------------------------------------------ the tree alone


@given(st.lists(st.integers(0, 10**20), min_size=1, max_size=40), st.data())
def test_every_proof_verifies_and_a_changed_leaf_does_not(amounts: list[int], data: st.DataObject) -> None:
    accounts = [_addr() for _ in amounts]
    tree = PayoutTree.build(job_id=3, listing_id=4, payees=list(zip(accounts, amounts, strict=True)))
    assert tree.total == sum(amounts)
    i = data.draw(st.integers(0, len(amounts) - 1))
    leaf = tree.leaves[i]
    assert verify(tree.root, leaf.hash(), tree.proof(i))
    assert len(tree.proof(i)) <= max(1, len(amounts) - 1).bit_length()
    assert not verify(tree.root, Leaf(3, 4, i, leaf.account, leaf.amount + 1).hash(), tree.proof(i))
    assert not verify(tree.root, Leaf(3, 5, i, leaf.account, leaf.amount).hash(), tree.proof(i))
    assert PayoutTree.from_bytes(tree.to_bytes()) == tree


def test_a_tree_refuses_bad_leaves_and_a_document_whose_root_lies() -> None:
    with pytest.raises(UsageError, match="at least one leaf"):
        PayoutTree.build(job_id=1, listing_id=1, payees=[])
    with pytest.raises(UsageError, match=r"not an address.*whole wei"):
        PayoutTree.build(job_id=1, listing_id=1, payees=[("nobody", -1)])
    doc = PayoutTree.build(job_id=1, listing_id=1, payees=[(_addr(), 1), (_addr(), 2)]).to_json()
    doc["leaves"][0]["amount"] = "5"
    with pytest.raises(IntegrityError, match="do not hash to the root"):
        PayoutTree.from_json(doc)
    assert hash_pair(b"\x01" * 32, b"\x02" * 32) == hash_pair(b"\x02" * 32, b"\x01" * 32)


# ------------------------------------------------------------------ on chain


def _settled(pool: PoolMarket, amounts: list[int], *, payout_shift: int = 0) -> tuple[int, PayoutTree, int]:
    """A job over the pool whose tree pays `amounts` to fresh members; the pool is paid total+shift."""
    payees = []
    for amount in amounts:
        who = pool.contributor()
        pool.join(who)
        payees.append((who.address, amount))
    jid = pool.submit(value=ETH)
    pool.claim_job(jid)
    tree = PayoutTree.build(job_id=jid, listing_id=pool.listing_id, payees=payees)
    payout = max(0, tree.total + payout_shift)
    pool.settle(jid, tree, payout=payout, spent=1, finalize=False)
    return jid, tree, payout


def _claim(pool: PoolMarket, jid: int, tree: PayoutTree, i: int, *, amount: int | None = None, proof=None):  # type: ignore[no-untyped-def]
    leaf = tree.leaves[i]
    return pool.pools.claim(
        pool.market.a.outsider,
        jid,
        pool.listing_id,
        index=leaf.index,
        account=leaf.account,
        amount=leaf.amount if amount is None else amount,
        proof=tree.proof(i) if proof is None else proof,
    )


def test_a_claim_finalizes_lazily_and_credits_once(pool: PoolMarket) -> None:
    jid, tree, _payout = _settled(pool, [100, 200, 300])
    assert not pool.pools.payout(jid, pool.listing_id).finalized
    _claim(pool, jid, tree, 1)
    state = pool.pools.payout(jid, pool.listing_id)
    assert (state.finalized, state.available, state.claimed) == (True, 600, 200)
    assert pool.pools.balance_of(tree.leaves[1].account) == 200
    assert pool.pools.is_claimed(jid, pool.listing_id, 1)
    assert not pool.pools.is_claimed(jid, pool.listing_id, 0)
    with pytest.raises(ContractRevert, match="pools: already claimed"):
        _claim(pool, jid, tree, 1)


def test_wrong_amounts_proofs_and_accounts_are_refused(pool: PoolMarket) -> None:
    jid, tree, _ = _settled(pool, [100, 200, 300, 400])
    with pytest.raises(ContractRevert, match="pools: invalid proof"):
        _claim(pool, jid, tree, 0, amount=101)
    with pytest.raises(ContractRevert, match="pools: invalid proof"):
        _claim(pool, jid, tree, 0, proof=tree.proof(1))
    with pytest.raises(ContractRevert, match="pools: invalid proof"):
        pool.pools.claim(
            pool.market.a.outsider,
            jid,
            pool.listing_id,
            index=0,
            account=_addr(),
            amount=100,
            proof=tree.proof(0),
        )
    with pytest.raises(ContractRevert, match="pools: invalid proof"):
        _claim(pool, jid, tree, 0, proof=[])
    assert pool.pools.payout(jid, pool.listing_id).claimed == 0


def test_claims_stop_at_the_payout_when_the_root_promised_more(pool: PoolMarket) -> None:
    jid, tree, payout = _settled(pool, [500, 500, 500], payout_shift=-700)
    _claim(pool, jid, tree, 0)
    with pytest.raises(ContractRevert, match="pools: claims above the payout"):
        _claim(pool, jid, tree, 1)
    assert pool.pools.payout(jid, pool.listing_id).claimed == 500 <= payout == 800


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(0, 10**15), min_size=1, max_size=6),
    st.integers(-(10**15), 10**15),
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["right", "amount+1", "other proof", "again"])),
        max_size=14,
    ),
)
def test_nothing_is_paid_twice_and_claims_never_pass_what_is_available(
    live, amounts, shift, attempts
) -> None:  # type: ignore[no-untyped-def]
    snap = live.chain.snapshot()
    try:
        pool = make_pool(live)
        jid, tree, payout = _settled(pool, amounts, payout_shift=shift)
        paid: dict[int, int] = {}
        for i, how in attempts:
            i %= len(amounts)
            leaf = tree.leaves[i]
            try:
                if how == "amount+1":
                    _claim(pool, jid, tree, i, amount=leaf.amount + 1)
                elif how == "other proof" and len(amounts) > 1:
                    _claim(pool, jid, tree, i, proof=tree.proof((i + 1) % len(amounts)))
                else:
                    _claim(pool, jid, tree, i)
                    assert i not in paid, "a leaf was paid twice"
                    paid[i] = leaf.amount
            except ContractRevert:
                pass
        if not pool.pools.payout(jid, pool.listing_id).finalized:
            pool.pools.finalize(live.a.outsider, jid, pool.listing_id)
        state = pool.pools.payout(jid, pool.listing_id)
        assert state.claimed == sum(paid.values()) <= state.available == min(tree.total, payout)
        for i, amount in paid.items():
            assert pool.pools.balance_of(tree.leaves[i].account) == amount
        assert pool.pools.balance_of(live.a.consumer.address) == payout - state.available
        assert pool.pools.liabilities() == pool.pools.ether_balance() == payout
    finally:
        live.chain.revert(snap)


# ------------------------------------------------------------------ wallets


@pytest.mark.parametrize("name", ["StorageWallet", "ReentrantWallet"])
def test_a_contract_wallet_member_claims_and_withdraws_once(pool: PoolMarket, name: str) -> None:
    wallet = _deploy(pool.market, name)
    _fund(pool.market, wallet)
    join = pool.pools.contract.encode_abi(
        "join", args=[pool.listing_id, "memory://w", os.urandom(32), b"k" * 80, 10**6]
    )
    wallet.execute(pool.pools.address, join)
    jid = pool.submit(value=ETH)
    pool.claim_job(jid)
    tree = PayoutTree.build(job_id=jid, listing_id=pool.listing_id, payees=[(wallet.address, 12345)])
    pool.settle(jid, tree, payout=12345, spent=1)
    _claim(pool, jid, tree, 0)
    before = pool.market.chain.w3.eth.get_balance(wallet.address)
    wallet.execute(pool.pools.address, pool.pools.contract.encode_abi("withdraw", args=[]))
    assert pool.market.chain.w3.eth.get_balance(wallet.address) == before + 12345
    assert pool.pools.balance_of(wallet.address) == 0
    assert pool.pools.liabilities() == pool.pools.ether_balance() == 0
    if name == "ReentrantWallet":
        assert wallet.read("reentry_tried")
        assert not wallet.read("reentry_succeeded")


# ------------------------------------------------------------------ gas


def _calldata_gas(pool: PoolMarket, receipt) -> int:  # type: ignore[no-untyped-def]
    data = bytes(pool.market.chain.w3.eth.get_transaction(receipt["transactionHash"])["input"])
    return sum(4 if b == 0 else 16 for b in data)


def _settle_gas(pool: PoolMarket, leaves: int, member: str) -> tuple[dict[str, int], int, PayoutTree]:
    jid = pool.submit(value=ETH)
    pool.claim_job(jid)
    each = 10_000 // leaves
    payees = [(member, each)] + [(_addr(), each) for _ in range(leaves - 1)]
    tree = PayoutTree.build(job_id=jid, listing_id=pool.listing_id, payees=payees)
    enclave, outsider = pool.market.a.enclave, pool.market.a.outsider
    receipts = {
        "commit": pool.pools.commit_payouts(
            enclave, jid, pool.listing_id, root=tree.root, total=tree.total, tree_uri="memory://t/" + "a" * 64
        ),
        "complete": pool.market.complete(jid, payouts=[10_000], spent=[1]),
        "finalize": pool.pools.finalize(outsider, jid, pool.listing_id),
    }
    # Calldata differs in its zero bytes (a root, a signature); what the contracts run does not.
    return {k: int(r["gasUsed"]) - _calldata_gas(pool, r) for k, r in receipts.items()}, jid, tree


def test_settlement_gas_is_the_same_for_ten_and_ten_thousand_leaves_and_a_claim_is_under_80k(
    pool: PoolMarket,
) -> None:
    member = pool.contributor()
    pool.join(member)
    chain = pool.market.chain
    snap = chain.snapshot()  # both settle from the same state (first writes cost more than later ones)
    small, _, _ = _settle_gas(pool, 10, member.address)
    chain.revert(snap)
    large, jid, tree = _settle_gas(pool, 10_000, member.address)
    assert small == large
    position = 0
    assert len(tree.proof(position)) == 14
    receipt = _claim(pool, jid, tree, position)  # the first claim in its bitmap word: the dearest
    assert int(receipt["gasUsed"]) < 80_000
