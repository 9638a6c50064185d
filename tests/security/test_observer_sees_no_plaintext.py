"""What a storage operator and a chain observer see: ciphertext, hashes, terms and payments, no plaintext.

One whole job runs on the embedded EVM with real sealing and storage; then
every blob in storage and every transaction's calldata and every event on
chain are searched for byte strings that would betray a provider's rows or
labels, the consumer's job body, or the trained model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from enclave_world import World, make_world, tabular

from sterling.sdk.consumer import fetch_result, submit_job
from sterling.storage.blobs import fetch_verified


@pytest.fixture
def world(tmp_path) -> World:
    w = make_world(tmp_path)
    yield w
    w.chain.close()


def _windows(raw: bytes, width: int, *, distinct: int = 8) -> set[bytes]:
    """Every aligned `width`-byte piece of `raw` with at least `distinct` byte values.

    Low-entropy pieces (zero padding, runs of small integers) also occur in ABI-encoded calldata
    by chance, so they would be false alarms; any piece that is left, found elsewhere, is a leak.
    """
    pieces = (raw[i : i + width] for i in range(0, len(raw) - width + 1, width))
    return {p for p in pieces if len(set(p)) >= distinct}


def _chain_bytes(world: World) -> list[bytes]:
    """Calldata of every transaction and data and topics of every log, from block 0 to the head."""
    w3 = world.chain.w3
    seen: list[bytes] = []
    for number in range(w3.eth.block_number + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            seen.append(bytes(tx.get("input", tx.get("data", b""))))
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            for log in receipt["logs"]:
                seen.append(bytes(log["data"]) + b"".join(bytes(t) for t in log["topics"]))
    return seen


def test_storage_and_chain_hold_no_plaintext(world):
    data = tabular(400, 1)
    listing = world.list_data(data, provider=0)
    job = world.job([listing])
    submitted = submit_job(
        world.market, world.consumer, world.consumer_key, job, world.store, trust=world.trust
    )
    (handled,) = world.worker.poll()
    assert handled.state == "completed", handled.reason
    bundle = fetch_result(world.market, submitted.job_id, world.consumer_key)

    # 16-byte pieces: four float32 features of a row, a slice of the job's canonical body or of
    # the model's weights. Labels are 0/1, so they are looked for as runs of 64 labels packed
    # one per bit, and as 64 int64 labels, as a columnar file would hold them. The job's privacy
    # parameters (clipping norm, δ, σ, q, steps, releases) are published on purpose, in its
    # privacy receipt, so anyone can recompute its ε: pieces of the body that are pieces of the
    # receipt are not secret; the rest of the body (model, learning rate, optimizer, name,
    # purpose, contract, validation set) is.
    (done,) = [e for e in world.market.job_events(submitted.job_id) if e.name == "JobCompleted"]
    receipt = fetch_verified(done.args["receipt_uri"], bytes(done.args["receipt_hash"]))
    secrets = {
        "rows": _windows(np.ascontiguousarray(data.features).tobytes(), 16),
        "labels": _windows(np.packbits(data.labels.astype(np.uint8)).tobytes(), 8, distinct=4)
        | _windows(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes(), 512, distinct=2),
        "job body": {p for p in _windows(job.canonical(), 16) if p not in receipt},
        "model": set().union(*(_windows(v.tobytes(), 16) for v in bundle.state.values())),
    }
    assert len(secrets["job body"]) > len(_windows(job.canonical(), 16)) // 2  # most of it stays sealed
    assert b'"learning_rate"' in job.canonical()
    assert b"learning_rate" not in receipt
    assert all(secrets.values()), "every secret must have pieces to look for"
    blobs = [p.read_bytes() for p in Path(world.store.root).rglob("*") if p.is_file()]
    assert len(blobs) >= 3  # the data, the sealed job body and the encrypted model at least
    public = {"storage": blobs, "chain": _chain_bytes(world)}
    assert public["chain"], "the chain must have transactions to search"

    for where, items in public.items():
        for what, pieces in secrets.items():
            leaked = [p for p in pieces if any(p in item for item in items)]
            assert not leaked, f"{len(leaked)} pieces of the {what} appear in plaintext in {where}"

    # The search reads the real contents: the public manifest names the classes in plain text.
    assert any(b'"healthy"' in blob for blob in blobs)
