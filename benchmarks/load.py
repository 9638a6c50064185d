"""Load: many consumers submit at once against a few listings; do the budgets and the money hold?

Run: `sterling bench load --format json` (`--quick` for a smaller market, as the test runs it).

One bounded run on a fresh anvil on 127.0.0.1: deploy the Marketplace, start `sterling enclave
run` workers as separate processes (a SIMULATED enclave), publish the scikit-learn breast-cancer
data split among providers, each listing with a budget that only `fit` jobs fit in. Every
consumer has its own funded account, connection and thread, and a DP logistic regression it has
already checked with the verifier (step 2 of the workflow). Then `consumers` of them submit
through the SDK at the same moment, and `late` ones once those submissions have returned; the
run waits until every accepted job has settled or the plan's timeout passes. Workers and anvil
are stopped by the run itself, whatever happens.

Figures: `jobs_per_min` (jobs completed per minute, from the moment submissions start to the
last settlement); `p50_ms` / `p95_ms`, an accepted submission's latency: the SDK's `submit_job`
from the call to the receipt (re-verifying against the chain, the providers' contracts, sealing
and storing the job, the transaction); `tx_p50_ms` / `tx_p95_ms`, the `submit_job` transaction
alone; and the counts, submitted = completed + refused (for budget, each with its reason: the
chain's revert for a consumer that lost the race, the verifier's for a late one) + failed.

Invariants, read from the chain afterwards (`invariants_held` is true only if all hold):

- `epsilon_within_budget`: replaying every reservation and release in log order, the ε charged
  plus reserved on each data never exceeds its budget, and ends equal to what the chain stores;
- `ether_conserved`: the ether of every account involved plus the Marketplace's, plus the gas
  paid (gasUsed × effectiveGasPrice of every receipt), equals the starting total, in wei;
- `per_account_ledger_exact`: each account's balance moved by exactly its transfers, withdrawals
  and gas;
- `escrow_settled_once`: every job ended in one final event, its escrow paid out and refunded
  (or refunded in full) exactly once, and the contract's ether equals its liabilities;
- `all_jobs_final`: no job is left pending or claimed;
- `models_open`: every completed job's model opens with its consumer's key (fair exchange).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from rich.table import Table

from sterling.chain import node
from sterling.chain.deploy import ensure_deployment, simulated_platform_key
from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain
from sterling.chain.types import JobState
from sterling.config import PROJECT_ROOT, Settings
from sterling.data.dataset import Dataset, Schema
from sterling.enclave.tee import code_measurement
from sterling.errors import ContractRevert, EnclaveError, SterlingError, UsageError
from sterling.privacy.graph import template
from sterling.privacy.job import Job
from sterling.privacy.verifier import verify
from sterling.sdk import consumer as sdk
from sterling.sdk.provider import ListingTerms, choose_enclave, publish, seal_dataset
from sterling.sdk.trust import Trust
from sterling.storage.blobs import BlobStore

ETHER = 10**18
MICRO = 10**6
FINAL_EVENTS = ("JobCompleted", "JobFailed", "JobCancelled")
FINAL_STATES = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)
BANK, PROVIDERS = 9, (1, 2, 3)  # anvil dev accounts; 0 deploys and funds the workers' gas


@dataclass(frozen=True)
class Plan:
    """How big one run is. Each listing's budget holds `fit` reservations of `epsilon` plus half of
    one. A job charges about 0.9 of what it reserves, so while `fit` ≤ 4 what settling releases never
    makes room for another job: consumers beyond `fit` on a listing are refused for budget."""

    consumers: int  # submit at the same moment
    listings: int
    workers: int
    fit: int
    late: int = 2  # submit once the others' submissions returned: the verifier, not the chain, refuses them
    steps: int = 30
    epsilon: float = 1.0
    multi_every: int = 4  # every n-th consumer trains on two listings at once
    timeout: float = 300.0  # seconds for the whole run, from anvil's start to the last settlement
    lease_seconds: int = 120

    @property
    def budget(self) -> float:
        return self.fit * self.epsilon + self.epsilon / 2


QUICK = Plan(consumers=8, listings=2, workers=2, fit=2, timeout=70.0)
FULL = Plan(consumers=24, listings=3, workers=2, fit=4, late=4, timeout=420.0)


@dataclass
class Attempt:
    """One consumer's submission and what became of it."""

    index: int
    listing_ids: tuple[int, ...]
    late: bool = False
    outcome: str = "error"  # accepted, refused (for budget) or error
    reason: str = ""
    job_id: int | None = None
    started: float = 0.0
    latency_ms: float | None = None
    tx_ms: float | None = None


class TimedMarketplace(Marketplace):
    """Sterling's own client, timing its `submit_job` transaction (sign, send, mined, receipt)."""

    tx_ms: float | None = None

    def submit_job(self, consumer: LocalAccount, **kwargs: Any) -> int:
        started = time.perf_counter()
        try:
            return super().submit_job(consumer, **kwargs)
        finally:
            self.tx_ms = (time.perf_counter() - started) * 1000


# ------------------------------------------------------------------ processes


class Workers:
    """`sterling enclave run` processes. `stop()` ends each with SIGTERM, then SIGKILL, and may be
    called twice. The first must be ready before the next starts: it creates the enclave's sealed
    keys, which the others share, and each funds its gas from the same dev account."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.addresses: dict[str, str] = {}

    def launch(self, *, rpc_url: str, state: Path, store: Path, name: str) -> None:
        args = ["enclave", "run", "--rpc-url", rpc_url, "--state", str(state), "--store", str(store)]
        args += ["--backend", "simulation", "--allow", "--poll", "0.2", "--format", "json", "--name", name]
        with open(self.tmp / f"worker-{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "sterling.cli", *args],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=PROJECT_ROOT,
                env={**os.environ, "STERLING_HOME": str(self.tmp / "home")},
                start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        """Wait until every launched worker has registered and said so (its first stdout line)."""
        for name, proc in self.procs.items():
            if name in self.addresses:
                continue
            line = _first_line(proc, deadline)
            try:
                ready = json.loads(line)
            except json.JSONDecodeError:
                ready = {}
            if ready.get("event") != "ready" or not ready.get("simulated"):
                log = (self.tmp / f"worker-{name}.log").read_text().strip().splitlines()[-3:]
                raise EnclaveError(
                    f"worker {name} did not become ready (exit {proc.poll()}): {' | '.join(log) or line}"
                )
            self.addresses[name] = str(ready["address"])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs = {}


def _first_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The process's first stdout line, or "" if it exits or the deadline passes first."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            return proc.stdout.readline()
        if proc.poll() is not None:
            return ""
    return ""


# ------------------------------------------------------------------ the market


def breast_cancer(parts: int, seed: int = 0) -> tuple[list[Dataset], Dataset]:
    """scikit-learn's breast-cancer data, standardised, split among `parts` providers, plus a test set."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[: len(y) // 5], order[len(y) // 5 :]

    def dataset(rows: np.ndarray) -> Dataset:
        schema = Schema("tabular", (x.shape[1],), "float32", ("malignant", "benign"), len(rows))
        return Dataset(x[rows], y[rows].astype(np.int64), schema)

    return [dataset(p) for p in np.array_split(train, parts)], dataset(test)


def consumer_job(listing_ids: tuple[int, ...], *, plan: Plan, seed: int) -> Job:
    """A quick DP logistic regression reserving `plan.epsilon` on each listing (it spends about 0.9 of it)."""
    return Job.parse(
        {
            "name": f"load consumer {seed}",
            "purpose": "research",
            "listings": [{"listing_id": lid, "epsilon": plan.epsilon} for lid in listing_ids],
            "model": template("logistic_regression", classes=2).model_dump(mode="json"),
            "training": {
                "steps": plan.steps,
                "sample_rate": 0.15,  # not a batch size: one noise calibration fits every job
                "target_epsilon": 0.8 * plan.epsilon,
                "learning_rate": 1.0,
                "clipping_norm": 1.0,
                "optimizer": "momentum",
                "seed": seed,
            },
            "evaluation": {
                "holdout_fraction": 0.2,
                "metrics": ["accuracy"],
                "metrics_epsilon": 0.1 * plan.epsilon,
            },
            "payment_cap_wei": ETHER,
        }
    )


def consumer_accounts(n: int) -> list[LocalAccount]:
    """Fresh accounts (fixed keys: every run starts a fresh chain), none of them an anvil dev account."""
    return [Account.from_key(keccak(f"sterling load consumer {i}".encode())) for i in range(n)]


# ------------------------------------------------------------------ the load


def _check(market: Marketplace, account: LocalAccount, job: Job) -> None:
    """Step 2 of the workflow, before anything is spent: the consumer's verifier accepts the job.

    A consumer checks a job while writing it (the editor does it live), so the load starts from
    jobs already checked; `submit_job` checks each again against the chain as it is then.
    """
    asks = {a.listing_id: a.epsilon for a in job.listings}
    report = verify(job, sdk.listing_views(market, list(asks), consumer=account.address, epsilons=asks))
    if not report.ok:
        raise UsageError(
            "the load's job does not pass the verifier: " + "; ".join(v.message for v in report.violations)
        )


def _submit(
    attempt: Attempt,
    market: TimedMarketplace,
    account: LocalAccount,
    key: X25519PrivateKey,
    job: Job,
    store: BlobStore,
    go: Callable[[], bool],
    trust: Trust,
) -> None:
    """One consumer: wait for its moment (`go`), submit through the SDK, record what happened."""
    if not go():
        attempt.reason = "the consumers never started together"
        return
    attempt.started = time.perf_counter()
    try:
        attempt.job_id = sdk.submit_job(market, account, key, job, store, trust=trust).job_id
    except sdk.JobRejected as exc:
        budget_only = all(v.term in ("budget", "open") for v in exc.report.violations)
        attempt.outcome, attempt.reason = ("refused" if budget_only else "error"), f"verifier: {exc}"
    except ContractRevert as exc:
        attempt.outcome, attempt.reason = (
            ("refused" if "budget" in exc.reason else "error"),
            f"chain: {exc.reason}",
        )
    except Exception as exc:  # noqa: BLE001 - a load test counts a failed submission, it does not stop
        attempt.reason = f"{type(exc).__name__}: {exc}"
    else:
        attempt.outcome = "accepted"
        attempt.latency_ms = (time.perf_counter() - attempt.started) * 1000
    attempt.tx_ms = market.tx_ms


def _watch(
    market: Marketplace, attempts: list[Attempt], threads: list[threading.Thread], deadline: float
) -> dict[int, float]:
    """When each job was first seen settled (perf_counter), until all accepted jobs are or time is up."""
    settled: dict[int, float] = {}
    next_block = 0
    while True:
        head = int(market.chain.w3.eth.block_number)
        if head >= next_block:
            for ev in market.events(from_block=next_block, to_block=head):
                if ev.name in FINAL_EVENTS:
                    settled.setdefault(int(ev.args["job_id"]), time.perf_counter())
            next_block = head + 1
        submitting = any(t.is_alive() for t in threads)
        waiting = [a for a in attempts if a.job_id is not None and a.job_id not in settled]
        if (not submitting and not waiting) or time.monotonic() > deadline:
            return settled
        time.sleep(0.2)


# ------------------------------------------------------------------ invariants


def check_epsilon(market: Marketplace) -> tuple[list[dict[str, Any]], list[str]]:
    """Replay every reservation and release in log order: charged + reserved ≤ budget at every step."""
    problems: list[str] = []
    listings: dict[bytes, list[int]] = defaultdict(list)
    for listing in market.listings():
        listings[listing.data_hash].append(listing.id)
    total: dict[bytes, int] = {}
    spent: dict[bytes, int] = defaultdict(int)
    reserved: dict[bytes, int] = defaultdict(int)
    peak: dict[bytes, int] = defaultdict(int)
    for ev in market.events():
        h = bytes(ev.args.get("data_hash", b""))
        if ev.name == "BudgetCreated":
            total[h] = int(ev.args["total"])
        elif ev.name == "EpsilonReserved":
            reserved[h] += int(ev.args["micro_epsilon"])
        elif ev.name == "EpsilonReleased":
            reserved[h] -= int(ev.args["reserved"])
            spent[h] += int(ev.args["charged"])
        else:
            continue
        peak[h] = max(peak[h], spent[h] + reserved[h])
        if reserved[h] < 0 or spent[h] + reserved[h] > total.get(h, 0):
            problems.append(
                f"listings {listings[h]}: {ev.name} in block {ev.block} left charged "
                f"{spent[h]} + reserved {reserved[h]} against a budget of {total.get(h, 0)} µε"
            )
    rows = []
    for h, ids in listings.items():
        b = market.budget(h)
        if (b.spent, b.reserved, b.total) != (spent[h], reserved[h], total.get(h)):
            problems.append(
                f"listings {ids}: the chain stores charged {b.spent}, reserved {b.reserved} of "
                f"{b.total} µε, its events add up to {spent[h]}, {reserved[h]} of {total.get(h)}"
            )
        rows.append(
            {
                "listings": ids,
                "epsilon_budget": b.total / MICRO,
                "epsilon_charged": b.spent / MICRO,
                "epsilon_reserved": b.reserved / MICRO,
                "peak_committed": peak[h] / MICRO,
            }
        )
    for job in market.jobs():
        for a in job.allocations:
            if a.spent > a.reserved:
                problems.append(
                    f"job {job.id}: listing {a.listing_id} charged {a.spent} > reserved {a.reserved} µε"
                )
    return rows, problems


def check_escrow(market: Marketplace, accounts: list[str]) -> tuple[dict[str, int], list[str], list[str]]:
    """Every job's escrow paid out and refunded exactly once; the contract's ether equals its liabilities.

    Returns (job states, problems with escrow or the ledger, jobs not final).
    """
    problems: list[str] = []
    by_job: dict[int, list[Any]] = defaultdict(list)
    credited = withdrawn = 0
    for ev in market.events():
        if "job_id" in ev.args:
            by_job[int(ev.args["job_id"])].append(ev)
        if ev.name in ("Payout", "Refund"):
            credited += int(ev.args["amount"])
        elif ev.name == "Withdrawal":
            withdrawn += int(ev.args["amount"])
    states: Counter[str] = Counter()
    unfinished, open_escrow = [], 0
    for job in market.jobs():
        states[job.state.label] += 1
        evs = by_job[job.id]
        ends = [e.name for e in evs if e.name in FINAL_EVENTS]
        refunds = [int(e.args["amount"]) for e in evs if e.name == "Refund"]
        payouts = [int(e.args["amount"]) for e in evs if e.name == "Payout"]
        releases = [e for e in evs if e.name == "EpsilonReleased"]
        if job.state not in FINAL_STATES:
            unfinished.append(f"job {job.id} is still {job.state.label}")
            open_escrow += job.escrow
            continue
        if len(ends) != 1 or len(refunds) != 1 or len(releases) != len(job.allocations):
            problems.append(
                f"job {job.id}: {ends} final events, {len(refunds)} refunds, {len(releases)} "
                f"releases for {len(job.allocations)} listings"
            )
        elif job.state is JobState.COMPLETED:
            recorded = [a.payout for a in job.allocations]
            if payouts != recorded or sum(payouts) + refunds[0] != job.escrow:
                problems.append(
                    f"job {job.id}: paid {payouts} (recorded {recorded}) + refunded {refunds[0]} "
                    f"≠ escrow {job.escrow}"
                )
        elif payouts or refunds[0] != job.escrow:
            problems.append(
                f"job {job.id} ({job.state.label}): paid {payouts}, refunded {refunds[0]} of {job.escrow}"
            )
    balances = sum(market.balance_of(a) for a in accounts)
    ether, liabilities = market.ether_balance(), market.liabilities()
    if not ether == liabilities == open_escrow + balances:
        problems.append(
            f"the contract holds {ether} wei, owes {liabilities}: open escrow {open_escrow} + "
            f"credited balances {balances}"
        )
    if credited != withdrawn + balances:
        problems.append(f"credited {credited} wei ≠ withdrawn {withdrawn} + still credited {balances}")
    return dict(states), problems, unfinished


def check_ether(chain: Chain, market: Marketplace) -> tuple[dict[str, Any], list[str], list[str]]:
    """Walk every block: each account's balance moved by its transfers, withdrawals and gas, exactly.

    Returns (figures, accounts whose ledger is off, problems with the global sum).
    """
    w3 = chain.w3
    head = int(w3.eth.block_number)
    flows: dict[str, int] = defaultdict(int)  # expected end - start, per account
    gas = tips = txs = 0
    miner = ""
    reverted: Counter[str] = Counter()
    for n in range(1, head + 1):
        block = w3.eth.get_block(n, full_transactions=True)
        miner, base = str(block["miner"]), int(block.get("baseFeePerGas", 0) or 0)
        transactions: list[Any] = list(block["transactions"])  # full transactions, not hashes
        for tx in transactions:
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            used, price = int(receipt["gasUsed"]), int(receipt["effectiveGasPrice"])
            sender, to = str(tx["from"]), str(tx["to"] or receipt["contractAddress"])
            gas, tips, txs = gas + used * price, tips + used * (price - base), txs + 1
            flows[sender] -= used * price
            flows[to] += 0  # a recipient is involved even when the transfer reverts
            if receipt["status"] == 1:
                flows[sender] -= int(tx["value"])
                flows[to] += int(tx["value"])
            else:
                reverted[_function(market, tx)] += 1
    for ev in market.events():
        if ev.name == "Withdrawal":
            flows[market.address] -= int(ev.args["amount"])
            flows[str(ev.args["account"])] += int(ev.args["amount"])
    problems = [f"the block producer {miner} is itself an account involved"] if miner in flows else []
    start = {a: int(w3.eth.get_balance(a, 0)) for a in flows}  # type: ignore[arg-type]
    end = {a: int(w3.eth.get_balance(a, head)) for a in flows}  # type: ignore[arg-type]
    off = [
        f"{a}: moved {end[a] - start[a]} wei, its transactions say {f}"
        for a, f in flows.items()
        if end[a] - start[a] != f
    ]
    if sum(end.values()) + gas != sum(start.values()):
        problems.append(
            f"balances {sum(end.values())} + gas {gas} ≠ starting total {sum(start.values())} wei"
        )
    figures = {
        "start_wei": sum(start.values()),
        "end_wei": sum(end.values()),
        "gas_wei": gas,
        "tips_to_block_producer_wei": tips,
        "marketplace_wei": end.get(market.address, 0),
        "accounts": len(flows),
        "transactions": txs,
        "blocks": head,
        "reverted": dict(reverted),
    }
    return figures, off, problems


def _function(market: Marketplace, tx: Any) -> str:
    """The Marketplace function a transaction called (its gas is paid even when it reverts)."""
    if str(tx["to"]) != market.address:
        return f"to {tx['to']}"
    try:
        return str(market.contract.decode_function_input(tx["input"])[0].fn_name)
    except ValueError:
        return "unknown"


# ------------------------------------------------------------------ the run


class LoadTest:
    """One bounded load test on a fresh local chain; `run()` returns the figures and the checks."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.phases: dict[str, float] = {}  # seconds: setup, prepare, total
        self._began = 0.0
        self._load_average = 0.0
        self._trust = Trust()  # the workers' own SIMULATED enclave, once `_market` started it

    def run(self) -> dict[str, Any]:
        began = self._began = time.monotonic()
        self._load_average = round(os.getloadavg()[0], 2)  # other work on the machine slows every figure
        self.phases = {}
        deadline = began + self.plan.timeout
        with tempfile.TemporaryDirectory(prefix="sterling-bench-load-") as tmp_name:
            tmp = Path(tmp_name)
            chain = node.start_anvil(Settings.from_env().require_anvil())
            workers = Workers(tmp)
            try:
                market, listing_ids, test = self._market(chain, workers, tmp, deadline)
                self.phases["setup"] = time.monotonic() - began
                result = self._load(
                    chain, market, workers, listing_ids, test, BlobStore(tmp / "blobs"), deadline
                )
            finally:
                workers.stop()
                chain.close()
        self.phases["total"] = time.monotonic() - began
        result["seconds"] = {phase: round(seconds, 1) for phase, seconds in self.phases.items()}
        result["plan"] = asdict(self.plan)
        return result

    def _market(
        self, chain: Chain, workers: Workers, tmp: Path, deadline: float
    ) -> tuple[Marketplace, list[int], Dataset]:
        plan, state, store = self.plan, tmp / "state", tmp / "blobs"
        deployment, _ = ensure_deployment(
            chain, state, deployer=chain.dev_accounts[0], lease_seconds=plan.lease_seconds
        )
        market = Marketplace.at(chain, deployment.marketplace)
        for i in range(plan.workers):  # the first registers alone; the others start beside the publishing
            workers.launch(rpc_url=str(chain.rpc_url), state=state, store=store, name=f"w{i + 1}")
            if i == 0:
                workers.wait_ready(deadline)
        # Clients seal only to a trusted enclave: the workers run Sterling's code, attested by the
        # simulated platform key in `state`.
        self._trust = Trust.of(code_measurement(), simulated_platform_key(state).address, simulated=True)
        enclave = choose_enclave(market, trust=self._trust)
        parts, test = breast_cancer(plan.listings)
        terms = ListingTerms(10**15, 2 * 10**15, plan.budget, plan.epsilon, 1e-5)
        listing_ids = []
        for i, part in enumerate(parts):
            sealed = seal_dataset(part, BlobStore(store), name=f"breast cancer, part {i + 1}")
            provider = chain.dev_accounts[PROVIDERS[i % len(PROVIDERS)]]
            listing_ids.append(publish(market, provider, sealed, terms, enclave=enclave).listing_id)
        return market, listing_ids, test

    def _asks(self, listing_ids: list[int]) -> list[tuple[int, ...]]:
        """Listings each consumer trains on: one, or every `multi_every`-th two; the late ones one each."""
        n, plan = len(listing_ids), self.plan
        asks: list[tuple[int, ...]] = [(listing_ids[i % n],) for i in range(plan.consumers)]
        for i in range(plan.multi_every - 1, plan.consumers if n > 1 else 0, plan.multi_every):
            asks[i] = (listing_ids[i % n], listing_ids[(i + 1) % n])
        return asks + [(listing_ids[i % n],) for i in range(plan.late)]

    def _load(
        self,
        chain: Chain,
        market: Marketplace,
        workers: Workers,
        listing_ids: list[int],
        test: Dataset,
        store: BlobStore,
        deadline: float,
    ) -> dict[str, Any]:
        plan = self.plan
        accounts = consumer_accounts(plan.consumers + plan.late)
        bank = chain.dev_accounts[BANK]
        for account in accounts:
            chain.transactor.send(
                bank, to=account.address, data=b"", value=ETHER // 2, function="fund", gas=21_000
            )
        keys = [X25519PrivateKey.generate() for _ in accounts]
        attempts = [Attempt(i, ask, i >= plan.consumers) for i, ask in enumerate(self._asks(listing_ids))]
        jobs = [consumer_job(a.listing_ids, plan=plan, seed=a.index) for a in attempts]
        for job, account in zip(jobs, accounts, strict=True):
            _check(market, account, job)
        barrier = threading.Barrier(plan.consumers + 1)
        threads: list[threading.Thread] = []

        def at_once() -> bool:
            with contextlib.suppress(threading.BrokenBarrierError):
                return barrier.wait(30) >= 0
            return False

        def after_the_others() -> bool:
            for t in threads[: plan.consumers]:
                t.join(max(0.0, deadline - time.monotonic()))
            return True

        for a, account, key, job in zip(attempts, accounts, keys, jobs, strict=True):
            own = TimedMarketplace(node.connect(str(chain.rpc_url)), market.address)  # its own connection
            go = after_the_others if a.late else at_once
            threads.append(
                threading.Thread(
                    target=_submit, args=(a, own, account, key, job, store, go, self._trust), daemon=True
                )
            )
        workers.wait_ready(deadline)
        self.phases["prepare"] = time.monotonic() - self._began - self.phases["setup"]
        for t in threads:
            t.start()
        barrier.wait(30)
        t0 = time.perf_counter()
        settled = _watch(market, attempts, threads, deadline)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        workers.stop()  # nothing may be mined while the chain is read back
        return self._figures(chain, market, attempts, accounts, keys, settled, t0, test)

    def _figures(
        self,
        chain: Chain,
        market: Marketplace,
        attempts: list[Attempt],
        accounts: list[LocalAccount],
        keys: list[X25519PrivateKey],
        settled: dict[int, float],
        t0: float,
        test: Dataset,
    ) -> dict[str, Any]:
        states = {a.job_id: market.job(a.job_id).state for a in attempts if a.job_id is not None}
        done = [a for a in attempts if a.job_id is not None and states[a.job_id] is JobState.COMPLETED]
        failed_jobs = [
            a for a in attempts if a.job_id is not None and states[a.job_id] is not JobState.COMPLETED
        ]
        refused = [a for a in attempts if a.outcome == "refused"]
        errors = [a for a in attempts if a.outcome == "error"]
        accuracy, sealed_shut = [], []
        for a in done:  # fair exchange: every paid-for model opens with its consumer's key
            try:
                bundle = sdk.fetch_result(market, int(a.job_id or 0), keys[a.index])
            except SterlingError as exc:
                sealed_shut.append(f"job {a.job_id}: its consumer cannot open the model: {exc}")
                continue
            accuracy.append(float((bundle.predict_proba(test.features).argmax(1) == test.labels).mean()))
        reasons = Counter(
            sdk.progress(market, int(a.job_id or 0)).reason or states[int(a.job_id or 0)].label
            for a in failed_jobs
        )
        people = [chain.dev_accounts[i] for i in PROVIDERS] + accounts
        for person in people:  # payouts and refunds leave the contract too, so the ledger covers withdrawals
            if market.balance_of(person.address) > 0:
                market.withdraw(person)
        budgets, eps_problems = check_epsilon(market)
        job_states, escrow_problems, unfinished = check_escrow(market, [p.address for p in people])
        ether, off_accounts, ether_problems = check_ether(chain, market)
        checks = {
            "epsilon_within_budget": not eps_problems,
            "ether_conserved": not ether_problems,
            "per_account_ledger_exact": not off_accounts,
            "escrow_settled_once": not escrow_problems,
            "all_jobs_final": not unfinished,
            "models_open": not sealed_shut,
        }
        latencies = [a.latency_ms for a in attempts if a.latency_ms is not None]
        tx_ms = [a.tx_ms for a in attempts if a.tx_ms is not None]
        ends = [settled[a.job_id] for a in done if a.job_id in settled]
        e2e = [settled[a.job_id] - a.started for a in done if a.job_id in settled]
        minutes = (max(ends) - t0) / 60 if ends else 0.0
        return {
            "jobs_per_min": round(len(done) / minutes, 2) if minutes else 0.0,
            "p50_ms": _pct(latencies, 50, 1),
            "p95_ms": _pct(latencies, 95, 1),
            "tx_p50_ms": _pct(tx_ms, 50, 1),
            "tx_p95_ms": _pct(tx_ms, 95, 1),
            "invariants_held": all(checks.values()),
            "checks": checks,
            "counts": {
                "submitted": len(attempts),
                "completed": len(done),
                "refused": len(refused),
                "failed": len(errors) + len(failed_jobs),
                "accepted": len(states),
                "refused_by_chain": sum(a.reason.startswith("chain: ") for a in refused),
                "refused_by_verifier": sum(a.reason.startswith("verifier: ") for a in refused),
                "late": sum(a.late for a in attempts),
                "late_refused_by_verifier": sum(
                    a.late and a.reason.startswith("verifier: ") for a in refused
                ),
            },
            "refused_reasons": dict(Counter(a.reason for a in refused)),
            "failure_reasons": dict(Counter(a.reason for a in errors) + reasons),
            "e2e_p50_s": _pct(e2e, 50, 2),
            "e2e_p95_s": _pct(e2e, 95, 2),
            "load_seconds": round(max(ends) - t0, 2) if ends else None,
            "model_accuracy_mean": round(float(np.mean(accuracy)), 4) if accuracy else None,
            "job_states": job_states,
            "budgets": budgets,
            "ether": ether,
            "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": self._load_average},
            "problems": eps_problems
            + escrow_problems
            + unfinished
            + ether_problems
            + off_accounts
            + sealed_shut,
        }


def _pct(values: list[float], q: float, digits: int) -> float | None:
    return round(float(np.percentile(values, q)), digits) if values else None


def run(quick: bool = False) -> dict[str, Any]:
    return LoadTest(QUICK if quick else FULL).run()


def table(result: dict[str, Any]) -> Table:
    plan, counts = result["plan"], result["counts"]
    t = Table(
        title=f"load: {plan['consumers']} consumers at once and {plan['late']} late, "
        f"{plan['listings']} listings, {plan['workers']} workers (SIMULATED enclave), anvil on loopback"
    )
    heads = ("jobs/min", "submit p50", "submit p95", "tx p50", "tx p95", "job p50", "submitted", "done",
             "refused", "failed", "invariants")  # fmt: skip
    for head in heads:
        t.add_column(head, justify="right")

    def show(value: Any) -> str:
        return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    t.add_row(
        *(
            show(result[k])
            for k in ("jobs_per_min", "p50_ms", "p95_ms", "tx_p50_ms", "tx_p95_ms", "e2e_p50_s")
        ),
        *(str(counts[k]) for k in ("submitted", "completed", "refused", "failed")),
        "held" if result["invariants_held"] else "BROKEN",
    )
    lines = [
        "submit: SDK call to receipt; tx: the submit_job transaction; job: submit to settled (ms, ms, s)"
    ]
    lines += [", ".join(f"{k} {'held' if v else 'BROKEN'}" for k, v in result["checks"].items())]
    lines += [
        f"listings {b['listings']}: ε charged {b['epsilon_charged']:g} of {b['epsilon_budget']:g} "
        f"(peak committed {b['peak_committed']:g})"
        for b in result["budgets"]
    ]
    lines += [f"refused ×{n}: {why}" for why, n in result["refused_reasons"].items()]
    lines += [f"problem: {p}" for p in result["problems"]]
    t.caption = "\n".join(lines)
    return t
