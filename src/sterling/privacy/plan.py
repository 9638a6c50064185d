"""The training plan: what the verifier approves and the enclave executes, mechanism by mechanism.

`verify(job, listings)` returns a `TrainingPlan` for a job it accepts: the
DP-SGD run (σ, q, steps, and the pilot that appraisal looks at), every
release with its ε and sensitivity, the adjacency, δ and the share of δ
kept for oblivious overflow. The enclave builds its engine and its releases
from the plan's numbers and never chooses its own, so what was verified is
visibly what runs; the receipt (`sterling.privacy.receipt`) lists which of
the plan's mechanisms ran on each listing's data.

A job's outcome depends on the data only through released values, so the
plan's *paths* are public in advance:

- one run: the run, then the releases;
- with a pilot (`release.retrain_without_dropped`): the run's first
  `pilot_steps`, the appraisal releases on that model, and then either the
  same run continued to its end (no one dropped: one run), or a second run
  without the dropped providers (who are charged the pilot and the
  releases only), or, if the consumer's contract drops everyone, no model.

The verifier reserves the worst of these (`worst_case`). Progress on chain
follows a public schedule (`schedule_steps`, `progress_epsilon`) that does
not depend on which path the data chose.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sterling.errors import UsageError
from sterling.privacy import mechanisms as mech
from sterling.privacy.mechanisms import DiscreteLaplace, DpSgd, Gaussian, Mechanism

FORMAT = "sterling.training-plan/1"
NEIGHBOURS = "replace_one"
#: Release names: appraisal releases follow the pilot (or the run); final releases follow the final model.
APPRAISAL = ("appraisal.values", "appraisal.screening")
#: Progress ε is read at this many points of a run at most (a PLD each, on the coarse grid).
PROGRESS_POINTS = 16


@dataclass(frozen=True)
class Oblivious:
    """Data-oblivious mode's public shape: δ set aside for overflow, over this many steps in all."""

    delta_overflow: float
    steps_total: int

    @property
    def per_step(self) -> float:
        return self.delta_overflow / self.steps_total


@dataclass(frozen=True)
class TrainingPlan:
    job_hash: str  # 0x-hex sha256 of the canonical job this plan is for
    listings: tuple[int, ...]
    delta: float  # the whole guarantee's δ: accounting plus overflow
    rows: int  # pooled rows, public
    train_rows: int
    eval_rows: int  # private held-out rows metrics are measured on (0: the consumer's own set)
    clipping_norm: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    pilot_steps: int | None = None
    oblivious: Oblivious | None = None
    releases: tuple[DiscreteLaplace | Gaussian, ...] = ()
    neighbours: str = NEIGHBOURS
    format: str = FORMAT

    # ------------------------------------------------------------ the parts

    @property
    def delta_accounting(self) -> float:
        """The δ at which ε is read: the job's δ less what oblivious overflow may take."""
        return self.delta - (self.oblivious.delta_overflow if self.oblivious else 0.0)

    @property
    def retrains(self) -> bool:
        return self.pilot_steps is not None

    @property
    def run(self) -> DpSgd:
        return DpSgd("training", self.noise_multiplier, self.sample_rate, self.steps)

    @property
    def pilot(self) -> DpSgd:
        return self.run.prefix(self.pilot_steps or self.steps, "pilot")

    @property
    def appraisal(self) -> tuple[DiscreteLaplace | Gaussian, ...]:
        return tuple(r for r in self.releases if r.name in APPRAISAL)

    @property
    def final(self) -> tuple[DiscreteLaplace | Gaussian, ...]:
        return tuple(r for r in self.releases if r.name not in APPRAISAL)

    def release(self, name: str) -> DiscreteLaplace | Gaussian | None:
        return next((r for r in self.releases if r.name == name), None)

    @property
    def schedule_steps(self) -> int:
        """Steps the public progress counts: pilot and a second run when retraining may follow."""
        return (self.pilot_steps or 0) + self.steps if self.retrains else self.steps

    # ---------------------------------------------------------------- paths

    def one_run(self, run_steps: int | None = None) -> tuple[Mechanism, ...]:
        """One run to its end (or `run_steps`), its appraisal and its final releases."""
        run = self.run if run_steps is None else self.run.prefix(run_steps)
        return (run, *self.appraisal, *self.final)

    def retrained(self, run_steps: int | None = None, *, kept: bool = True) -> tuple[Mechanism, ...]:
        """A pilot, its appraisal, and (for a kept provider) a second run and what follows it."""
        head: tuple[Mechanism, ...] = (self.pilot, *self.appraisal)
        if not kept:
            return head + tuple(r for r in self.final if r.name != "attribution")
        run = self.run if run_steps is None else self.run.prefix(run_steps)
        return (*head, run, *self.final)

    def worst_case(self) -> tuple[Mechanism, ...]:
        """What the verifier reserves on every listing: the most any path may charge."""
        return self.retrained() if self.retrains else self.one_run()

    def epsilon(self, mechanisms: Sequence[Mechanism], *, grid: float = mech.REPORT_GRID) -> float:
        return mech.epsilon(mechanisms, self.delta_accounting, grid=grid)

    def progress_epsilon(self, step: int) -> float:
        """ε shown on chain after public step `step`: the worst path's, whatever path ran.

        Read on the coarse grid at PROGRESS_POINTS steps of each run, rounding up (an upper
        bound of the figure at `step`, cheap enough for a heartbeat thread).
        """
        if step <= 0:
            return 0.0
        return _progress(self, min(step, self.schedule_steps))

    # ------------------------------------------------------------ identity

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "job_hash": self.job_hash,
            "listings": list(self.listings),
            "neighbours": self.neighbours,
            "delta": self.delta,
            "rows": self.rows,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "clipping_norm": self.clipping_norm,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "pilot_steps": self.pilot_steps,
            "oblivious": None
            if self.oblivious is None
            else {"delta_overflow": self.oblivious.delta_overflow, "steps_total": self.oblivious.steps_total},
            "releases": [mech.to_json(r) for r in self.releases],
        }

    def canonical(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    def sha256(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    @classmethod
    def from_json(cls, doc: Any) -> TrainingPlan:
        """A plan from its JSON form (as a receipt carries it); a UsageError names what is wrong."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            what = doc.get("format") if isinstance(doc, dict) else doc
            raise UsageError(f"not a Sterling training plan (format {str(what)[:60]!r})")
        if doc.get("neighbours") != NEIGHBOURS:
            raise UsageError(
                f"a training plan under {doc.get('neighbours')!r} adjacency: "
                f"Sterling accounts under {NEIGHBOURS}"
            )
        try:
            obl = doc.get("oblivious")
            releases = tuple(mech.from_json(r) for r in doc["releases"])
            if any(isinstance(r, DpSgd) for r in releases):
                raise UsageError("a plan's releases are discrete Laplace or Gaussian, not DP-SGD")
            plan = cls(
                job_hash=str(doc["job_hash"]),
                listings=tuple(int(i) for i in doc["listings"]),
                delta=float(doc["delta"]),
                rows=int(doc["rows"]),
                train_rows=int(doc["train_rows"]),
                eval_rows=int(doc["eval_rows"]),
                clipping_norm=float(doc["clipping_norm"]),
                noise_multiplier=float(doc["noise_multiplier"]),
                sample_rate=float(doc["sample_rate"]),
                steps=int(doc["steps"]),
                pilot_steps=None if doc.get("pilot_steps") is None else int(doc["pilot_steps"]),
                oblivious=None
                if obl is None
                else Oblivious(float(obl["delta_overflow"]), int(obl["steps_total"])),
                releases=releases,  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"a training plan: {type(exc).__name__}: {exc}") from None
        if not 0 < plan.delta_accounting < 1:
            raise UsageError(f"a training plan's δ must leave room for accounting, got δ {plan.delta}")
        return plan

    def summary(self, *, price_per_listing: dict[int, int], bonus_pool_wei: int, payment_cap_wei: int,
                family: str) -> dict[str, Any]:  # fmt: skip
        """The verifier's figures as one JSON object, for people and pages (the plan is the truth)."""
        worst = self.epsilon(self.worst_case())
        one = self.epsilon((self.run,))
        pilot = self.epsilon((self.pilot,)) if self.retrains else None
        by_name = {r.name: r for r in self.releases}

        def eps_of(*names: str) -> float:
            return sum(
                r.epsilon if isinstance(r, DiscreteLaplace) else 0.0 for n, r in by_name.items() if n in names
            )

        attribution = by_name.get("attribution")
        return {
            "model_family": family,
            "neighbours": self.neighbours,
            "train_rows": self.train_rows,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "delta_overflow": self.oblivious.delta_overflow if self.oblivious else 0.0,
            "epsilon_training": {"pld": one},
            "training_runs": 2 if self.retrains else 1,
            "pilot_steps": self.pilot_steps,
            "epsilon_pilot": pilot,
            "epsilon_metrics": eps_of("metrics.accuracy", "metrics.loss"),
            "epsilon_appraisal": eps_of(*APPRAISAL),
            "epsilon_attribution": 0.0
            if not isinstance(attribution, Gaussian)
            else _gaussian_epsilon(attribution, self.delta_accounting),
            "epsilon_total": worst,
            "epsilon_per_listing": {str(lid): worst for lid in self.listings},
            "price_per_listing_wei": {str(k): v for k, v in price_per_listing.items()},
            "price_total_wei": sum(price_per_listing.values()),
            "bonus_pool_wei": bonus_pool_wei,
            "payment_cap_wei": payment_cap_wei,
            "plan_sha256": "0x" + self.sha256().hex(),
        }


def _gaussian_epsilon(g: Gaussian, delta: float) -> float:
    return mech.epsilon((g,), delta)


@lru_cache(maxsize=512)
def _progress(plan: TrainingPlan, step: int) -> float:
    def up(n: int, total: int) -> int:
        every = max(1, math.ceil(total / PROGRESS_POINTS))
        return min(total, math.ceil(n / every) * every)

    if not plan.retrains:
        return plan.epsilon((plan.run.prefix(up(step, plan.steps)),), grid=mech.COARSE_GRID)
    pilot = plan.pilot_steps or plan.steps
    if step <= pilot:
        return plan.epsilon((plan.run.prefix(up(step, pilot)),), grid=mech.COARSE_GRID)
    after = up(step - pilot, plan.steps)
    return plan.epsilon((plan.pilot, *plan.appraisal, plan.run.prefix(after)), grid=mech.COARSE_GRID)
