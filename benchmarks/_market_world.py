"""A large market on a real anvil, fast: the generator behind `sterling bench market`.

Publishing through the SDK runs at ~60 transactions per second (sign, send, wait for a receipt,
one block each), so 100,000 listings would take half an hour. Here every transaction is still a
real, locally signed transaction to Sterling's own Marketplace, only sent differently: signed with
eth-account (coincurve), sent raw in JSON-RPC batches while anvil's automine is off, and mined a
few thousand at a time into one large block (`--disable-block-gas-limit`, `--order fifo`).

Each listing has its own manifest in the content-addressed blob store (the index reads them) and
its own data hash, so each publish creates a budget too: 2 events (BudgetCreated,
ListingPublished). The rest of the events come from real job traffic that adds no listing: one
consumer submits a job over up to 32 listings (JobSubmitted + one EpsilonReserved each) and
cancels it (one EpsilonReleased each + Refund + JobCancelled), 67 events per pair, and every
reservation is released, so the budgets never run out.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import coincurve
import rlp  # type: ignore[import-untyped]
from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from sterling.chain import digests, node
from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain
from sterling.errors import ChainError
from sterling.storage.blobs import BlobStore
from sterling.storage.manifest import MANIFEST_FORMAT

#: anvil options for a bulk load: blocks as large as the batch, transactions in arrival order.
#: anvil keeps a copy of the whole state for every block (history is needed: the index reads code
#: and hashes at past blocks), so memory grows as blocks × state; a first full run with blocks of
#: 2,000 publishes and 200 job pairs reached 23 GB and was killed. Hence few, very large blocks.
ANVIL_ARGS = ("--disable-block-gas-limit", "--order", "fifo")
MEASUREMENT = keccak(b"sterling bench market measurement")
HPKE = keccak(b"sterling bench market hpke")
#: anvil dev accounts: 0 deploys; these publish; one consumer makes the job traffic; one enclave.
PROVIDERS, CONSUMER, ENCLAVE = (1, 2, 3, 4, 5, 6), 7, 8
JOB_LISTINGS = 32  # MAX_LISTINGS: the most events one submission emits
PUBLISH_GAS, JOB_GAS = 1_000_000, 12_000_000
EPSILON_BUDGET, MAX_EPS, JOB_EPS = 100_000_000, 10_000_000, 1_000  # micro-ε
JOB_VALUE = 10**15  # covers 32 listings at the prices below; the excess is refunded on cancel
WORDS = ("fundus", "retina", "cardiac", "oncology", "sepsis", "diabetes", "asthma", "stroke")
SITES = ("clinic", "hospital", "registry", "cohort", "biobank", "trial")
CLASSES = (
    ("healthy", "ill"),
    ("benign", "malignant"),
    ("none", "mild", "moderate", "severe", "proliferative"),
)
PUBLISH = (
    "publish(string,bytes32,bytes,bytes32,(uint256,uint256,uint256,address,bytes32,uint256),uint256,uint256)"
)
SUBMIT = "submit_job(uint256[],uint256[],uint256[],uint256,bytes32,bytes32,string)"
CANCEL = "cancel_job(uint256)"


def selector(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


def events_per_pair(listings: int) -> int:
    """Events of one submit (JobSubmitted + k EpsilonReserved) and its cancel (k EpsilonReleased,
    Refund, JobCancelled) over `listings` listings."""
    k = min(JOB_LISTINGS, listings)
    return 2 * k + 3


def manifest(i: int) -> dict[str, Any]:
    """Listing `i`'s public manifest: a name, a description and classes to search, a schema."""
    word, site = WORDS[i % len(WORDS)], SITES[(i // len(WORDS)) % len(SITES)]
    classes = CLASSES[i % len(CLASSES)]
    rows = 100 + (i * 7919) % 100_000
    return {
        "format": MANIFEST_FORMAT,
        "name": f"{word} {site} {i}",
        "description": f"De-identified {word} records from {site} number {i}, {rows} rows.",
        "schema": {
            "modality": "tabular",
            "shape": [8 + i % 24],
            "dtype": "float32",
            "classes": list(classes),
            "rows": rows,
        },
        "ciphertext": None,
        "contract": None,
        "terms": {"allowed_model_families": None, "appraisal_fee_wei": 0},
    }


def price_terms(i: int) -> tuple[int, int, int, str, bytes, int]:
    """(price_per_job, price_per_epsilon, max_epsilon_per_job, policy, pin, price_per_prediction)."""
    return ((i * 7_919) % 997 * 10**10, 10**12, MAX_EPS, "0x" + "00" * 20, bytes(32), 0)


class Rpc:
    """Raw JSON-RPC over one kept-alive HTTP connection, batches included; counts calls."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        parts = urlparse(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
        self.calls = 0

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        self.conn.request("POST", "/", json.dumps(body), {"Content-Type": "application/json"})
        answers = json.loads(self.conn.getresponse().read())
        self.calls += len(calls)
        by_id = {a["id"]: a for a in answers}
        out = []
        for i, (method, _) in enumerate(calls):
            answer = by_id[i]
            if "error" in answer:
                raise ChainError(f"{method} refused by anvil: {answer['error'].get('message')}")
            out.append(answer["result"])
        return out

    def call(self, method: str, params: list[Any]) -> Any:
        return self.batch([(method, params)])[0]

    def close(self) -> None:
        self.conn.close()


@dataclass
class Sender:
    """One account's signed transactions, nonces tracked here.

    Legacy EIP-155 transactions, signed with coincurve directly (the library eth-account itself
    signs with here): eth-account's own path costs ~0.6-2 ms a transaction, this ~0.1 ms. The
    first transaction of each sender is also signed by eth-account and must come out byte for
    byte the same (both sign deterministically, RFC 6979), and anvil recovers every sender from
    its signature: a wrong one would be refused or fail for want of funds.
    """

    account: LocalAccount
    nonce: int
    gas_price: int
    chain_id: int
    checked: bool = False

    def sign(self, to: str, data: bytes, gas: int, value: int = 0) -> str:
        key = coincurve.PrivateKey(bytes(self.account.key))
        fields = [self.nonce, self.gas_price, gas, bytes.fromhex(to[2:]), value, data]
        digest = keccak(rlp.encode([*fields, self.chain_id, 0, 0]))
        signature = key.sign_recoverable(digest, hasher=None)
        r, s, recovery = (
            int.from_bytes(signature[:32], "big"),
            int.from_bytes(signature[32:64], "big"),
            signature[64],
        )
        raw = bytes(rlp.encode([*fields, recovery + 35 + 2 * self.chain_id, r, s]))
        if not self.checked:
            tx: dict[str, Any] = {"nonce": self.nonce, "gasPrice": self.gas_price, "gas": gas, "to": to}
            tx.update(value=value, data=data, chainId=self.chain_id)
            reference = self.account.sign_transaction(tx)
            if bytes(reference.raw_transaction) != raw:
                raise ChainError("the bulk signer disagrees with eth-account's signature")
            self.checked = True
        self.nonce += 1
        return "0x" + raw.hex()


@dataclass
class World:
    """The chain, the Marketplace, the store, and what was put on them."""

    chain: Chain
    market: Marketplace
    store: BlobStore
    home: Path
    listings: int = 0
    jobs: int = 0
    events: int = 0  # every event of the three contracts, counted from the receipts
    publish_seconds: float = 0.0
    traffic_seconds: float = 0.0
    manifest_seconds: float = 0.0

    @property
    def rpc_url(self) -> str:
        assert self.chain.rpc_url is not None
        return self.chain.rpc_url

    def close(self) -> None:
        self.chain.close()


def start(binary: Path, tmp: Path) -> World:
    """anvil on loopback (automine on for set-up), the three contracts, one registered enclave."""
    chain = node.start_anvil(binary, extra_args=ANVIL_ARGS)
    try:
        admin, platform = chain.dev_accounts[0], chain.dev_accounts[9]
        market = Marketplace.deploy(
            chain, admin, attestation_signer=platform.address, measurements=[MEASUREMENT]
        )
        enclave = chain.dev_accounts[ENCLAVE]
        att = digests.sign_digest(
            platform,
            market.attestation_digest(measurement=MEASUREMENT, enclave=enclave.address, hpke_public_key=HPKE),
        )
        market.register_enclave(enclave, measurement=MEASUREMENT, hpke_public_key=HPKE, attestation=att)
    except BaseException:
        chain.close()
        raise
    world = World(chain, market, BlobStore(tmp / "store"), tmp / "home")
    world.events = len(market.events())
    return world


def _senders(world: World, rpc: Rpc, indexes: tuple[int, ...]) -> list[Sender]:
    accounts = [world.chain.dev_accounts[i] for i in indexes]
    nonces = rpc.batch([("eth_getTransactionCount", [a.address, "pending"]) for a in accounts])
    price = int(rpc.call("eth_gasPrice", []), 16) * 2 + 10**9
    return [Sender(a, int(n, 16), price, world.chain.chain_id) for a, n in zip(accounts, nonces, strict=True)]


def _send_and_mine(rpc: Rpc, raw: list[str]) -> int:
    """Send signed transactions in batches, mine them into one block, check they all succeeded;
    returns the number of events their receipts carry."""
    hashes: list[str] = []
    for start in range(0, len(raw), 500):
        hashes += rpc.batch([("eth_sendRawTransaction", [r]) for r in raw[start : start + 500]])
    rpc.call("evm_mine", [])
    receipts = rpc.call("eth_getBlockReceipts", ["latest"]) or []
    mined = {r["transactionHash"]: r for r in receipts}
    failed = sum(1 for h in hashes if h not in mined or mined[h]["status"] != "0x1")
    if failed:
        raise ChainError(f"{failed} of {len(hashes)} bulk transactions were not mined or reverted")
    return sum(len(mined[h]["logs"]) for h in hashes)


class Pipeline:
    """Mines one batch in a second thread while the caller signs the next: anvil and Python
    overlap. Batches stay in order: the next is sent only once the one before was mined."""

    def __init__(self, rpc: Rpc, world: World) -> None:
        self.rpc, self.world = rpc, world
        self.pool = ThreadPoolExecutor(1)
        self.pending: Future[int] | None = None

    def submit(self, raw: list[str]) -> None:
        self.wait()
        self.pending = self.pool.submit(_send_and_mine, self.rpc, raw)

    def wait(self) -> None:
        if self.pending is not None:
            self.world.events += self.pending.result()
            self.pending = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()


def _put(root: Path, store: BlobStore, doc: bytes) -> str:
    """`store.put_bytes` for a local store, without fsspec's per-call cost: the same address and
    layout (``<root>/<h[:2]>/<h>``), written to a temporary name and renamed, as it does."""
    digest = hashlib.sha256(doc).digest()
    folder = root / digest.hex()[:2]
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{digest.hex()}.tmp"
    tmp.write_bytes(doc)
    os.replace(tmp, folder / digest.hex())
    return store.uri(digest)


def _manifest_uris(world: World, first: int, count: int) -> list[str]:
    """Write listings first..first+count-1's manifests to the store; their URIs, in order."""
    started = time.perf_counter()
    root = Path(world.store.root)
    docs = [json.dumps(manifest(i), sort_keys=True, indent=1).encode() for i in range(first, first + count)]
    uris = [_put(root, world.store, doc) for doc in docs]
    world.manifest_seconds += time.perf_counter() - started
    return uris


@contextmanager
def _bulk(world: World) -> Iterator[tuple[Rpc, Pipeline]]:
    """Automine off, a connection and a pipeline for the bulk; automine back on after, and the
    SDK's transactor told to read its nonces again."""
    rpc = Rpc(world.rpc_url)
    rpc.call("evm_setAutomine", [False])
    pipeline = Pipeline(rpc, world)
    try:
        yield rpc, pipeline
    finally:
        try:
            pipeline.close()
        finally:
            rpc.call("evm_setAutomine", [True])
            rpc.close()
            world.chain.transactor.reset()


def publish(
    world: World, count: int, *, chunk: int = 5_000, tick: Callable[[int], None] = lambda n: None
) -> None:
    """Publish `count` listings, each with its own data (and budget) and manifest."""
    started = time.perf_counter()
    with _bulk(world) as (rpc, pipeline):
        senders = _senders(world, rpc, PROVIDERS)
        sel = selector(PUBLISH)
        types = ["string", "bytes32", "bytes", "bytes32", "(uint256,uint256,uint256,address,bytes32,uint256)"]
        types += ["uint256", "uint256"]
        for first in range(world.listings + 1, world.listings + count + 1, chunk):
            n = min(chunk, world.listings + count + 1 - first)
            uris = _manifest_uris(world, first, n)
            raw = []
            for j, uri in enumerate(uris):
                i = first + j
                args = [uri, keccak(b"data %d" % i), keccak(b"sealed %d" % i) * 3, bytes(32), price_terms(i)]
                data = sel + abi_encode(types, [*args, EPSILON_BUDGET, 10**13])
                # Each sender's run of listings is contiguous, so ids follow the manifests' order.
                sender = senders[j * len(senders) // n]
                raw.append(sender.sign(world.market.address, data, PUBLISH_GAS))
            pipeline.submit(raw)
            tick(n)
        pipeline.wait()
        world.listings += count
    world.publish_seconds += time.perf_counter() - started


def _pairs(world: World, pairs: int) -> Iterator[tuple[list[int], int]]:
    """(listing ids, job id) of each submit-and-cancel pair, spreading jobs over every listing."""
    k = min(JOB_LISTINGS, world.listings)
    for p in range(pairs):
        base = (p * k) % world.listings
        yield [(base + j) % world.listings + 1 for j in range(k)], world.jobs + p + 1


def traffic(
    world: World, events: int, *, chunk: int = 1_000, tick: Callable[[int], None] = lambda n: None
) -> int:
    """At least `events` events of job traffic (submit and cancel pairs); returns the pairs sent."""
    if events <= 0 or world.listings == 0:
        return 0
    per = events_per_pair(world.listings)
    pairs = -(-events // per)
    started = time.perf_counter()
    with _bulk(world) as (rpc, pipeline):
        (consumer,) = _senders(world, rpc, (CONSUMER,))
        submit, cancel = selector(SUBMIT), selector(CANCEL)
        types = ["uint256[]", "uint256[]", "uint256[]", "uint256", "bytes32", "bytes32", "string"]
        batch: list[str] = []
        for n, (ids, job_id) in enumerate(_pairs(world, pairs), start=1):
            k = len(ids)
            job_hash = keccak(b"job %d" % job_id)
            args = [ids, [JOB_EPS] * k, [JOB_VALUE] * k, 10**13, HPKE, job_hash, f"file:///jobs/{job_id}"]
            batch.append(
                consumer.sign(world.market.address, submit + abi_encode(types, args), JOB_GAS, JOB_VALUE)
            )
            batch.append(
                consumer.sign(world.market.address, cancel + abi_encode(["uint256"], [job_id]), JOB_GAS)
            )
            if len(batch) >= 2 * chunk or n == pairs:
                pipeline.submit(batch)
                tick(len(batch) // 2 * per)
                batch = []
        pipeline.wait()
        world.jobs += pairs
    world.traffic_seconds += time.perf_counter() - started
    return pairs
