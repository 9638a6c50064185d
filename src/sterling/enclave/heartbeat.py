"""Keeping a claimed job's lease alive, and telling the world how far training got.

From the moment a worker claims a job until it settles, a background thread
calls `report_progress` every `interval` seconds (a third of the lease or
less): the chain renews the lease and records the public progress (steps
done and planned, ε spent so far, which follow from the job's public
parameters). Training only updates the numbers, so a long phase that is not
training (verifying, decrypting, calibrating) cannot let the lease lapse.

If a report is refused (the lease ran out and another worker claimed the
job), the next `update` raises `LeaseLost` and this worker stops the job
without settling it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from types import TracebackType

from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.chain.units import MICRO
from sterling.errors import ChainError, ContractRevert, EnclaveError


class LeaseLost(EnclaveError):
    """Another worker took the job over; this one stops without settling."""


class Heartbeat:
    def __init__(
        self,
        market: Marketplace,
        account: LocalAccount,
        job_id: int,
        *,
        interval: float,
        log: Callable[[str], None],
    ) -> None:
        self.market = market
        self.account = account
        self.job_id = job_id
        self.interval = interval
        self._log = log
        self._lock = threading.Lock()
        self._step = self._steps = 0
        self._epsilon_of: Callable[[int], float] = lambda _: 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self.check()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def plan(self, steps: int, epsilon_of: Callable[[int], float]) -> None:
        """Training will run `steps` steps; `epsilon_of(step)` is the ε spent after `step` of them."""
        with self._lock:
            self._steps, self._epsilon_of = steps, epsilon_of

    def update(self, step: int) -> None:
        """Training reached `step`; raises `LeaseLost` if the job was taken over."""
        with self._lock:
            self._step = step
        self.check()

    def finish(self, step: int) -> None:
        """Training is over: stop the background beats, then report `step` as the last word.

        Stopping first keeps a late background beat from landing after, and overwriting, the
        final progress on chain; the beat sent here also renews the lease for settlement.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            self._step = step
        self.beat()
        self.check()

    def check(self) -> None:
        if self._lost is not None:
            raise LeaseLost(f"lost the lease ({self._lost}); another worker takes over")

    def beat(self) -> None:
        """Report progress and renew the lease now."""
        with self._lock:
            step, steps, epsilon_of = self._step, max(self._steps, self._step), self._epsilon_of
        eps = epsilon_of(step) if step else 0.0
        try:
            self.market.report_progress(
                self.account, self.job_id, step=step, steps=steps, micro_epsilon=math.ceil(eps * MICRO)
            )
        except ContractRevert as exc:
            self._lost = exc.reason
            self._stop.set()
            return
        except (ChainError, OSError) as exc:  # the node is briefly unreachable: try at the next beat
            self._log(f"job {self.job_id}: heartbeat not sent ({type(exc).__name__})")
            return
        if steps:
            self._log(f"job {self.job_id}: step {step}/{steps}, ε {eps:.3f}")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - the lease must outlive a bad progress figure
                self._log(f"job {self.job_id}: heartbeat failed ({type(exc).__name__}: {exc}); retrying")
