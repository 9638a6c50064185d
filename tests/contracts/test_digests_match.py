"""The off-chain digests equal the contract's own, and the artefacts equal the sources."""

from __future__ import annotations

import os

import pytest

from sterling.chain import artifacts, digests


def test_attestation_digest_matches_the_contract(market):
    m, e, h = os.urandom(32), market.a.enclave.address, os.urandom(32)
    ours = market.m.attestation_digest(measurement=m, enclave=e, hpke_public_key=h)
    theirs = market.m.registry.contract.functions.attestation_digest(m, e, h).call()
    assert ours == bytes(theirs)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_settlement_digest_matches_the_contract(market, n):
    args = dict(
        result_hash=os.urandom(32),
        model_uri="memory://m/" + "x" * n,
        sealed_model_key=os.urandom(80),
        payouts=list(range(n)),
        spent=[7] * n,
        weights=[n] * n,
        receipt_hash=os.urandom(32),
    )
    ours = market.m.settlement_digest(5, **args)
    theirs = market.m.contract.functions.settlement_digest(5, *args.values()).call()
    assert ours == bytes(theirs)
    assert (
        digests.recover_signer(ours, digests.sign_digest(market.a.enclave, ours)) == market.a.enclave.address
    )


def test_the_settlement_digest_commits_to_the_receipt_hash(market):
    args = dict(
        result_hash=os.urandom(32),
        model_uri="memory://m",
        sealed_model_key=b"k",
        payouts=[1],
        spent=[2],
        weights=[3],
    )
    first, second = os.urandom(32), os.urandom(32)
    ours = [market.m.settlement_digest(5, **args, receipt_hash=r) for r in (first, second)]
    theirs = [
        bytes(market.m.contract.functions.settlement_digest(5, *args.values(), r).call())
        for r in (first, second)
    ]
    assert ours == theirs
    assert ours[0] != ours[1]


def test_committed_artefacts_match_the_sources():
    fresh = artifacts.compile_all()
    for name, art in fresh.items():
        committed = artifacts.load(name)
        assert committed.abi == art.abi, name
        assert committed.bytecode == art.bytecode, name
        assert committed.bytecode_runtime == art.bytecode_runtime, name
        assert committed.sources_sha256 == artifacts.sources_digest()
