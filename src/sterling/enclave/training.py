"""Inside the enclave: execute a verified plan on decrypted data, evaluate, appraise.

`Training(job, plan, datasets, ...).run()` takes the verifier's
`TrainingPlan` (the noise multiplier, sampling rate, steps, pilot and every
release it proved within every listing's terms) and never chooses its own:
what was verified is what runs. In order:

1. `split`: the listings' rows pooled in job order, the held-out rows a
   permutation seeded by the job (a public choice of positions);
2. the run, or its pilot when the job retrains without dropped providers;
3. appraisal of that model, released through the plan's mechanisms;
4. the consumer's `keep` and the label screen choose whom to keep: the run
   goes on (no one dropped), or a second run trains without the dropped
   providers, or, if no one is kept, the job ends without a model;
5. attribution and metrics, each the plan's release.

Every random choice comes from `rng`, a stream of the enclave's secret
(`SecretRandom`), split per use; the job's seed fixes only the initial
weights and the held-out split. A `Ledger` records, as it happens, every
mechanism that has run on each listing's data, so that whatever ends the
job (settlement, a failure, a budget stop) is charged exactly what ran
(`sterling.privacy.receipt`).

What leaves this module is the model, the ledger, and metrics that are
either measured on the consumer's own validation set (no private data, no
noise) or released through the plan's discrete mechanisms. Training losses
are computed from private data and never reported outside the enclave.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sterling.appraisal import AppraisalData, AppraisalResult, RowShare
from sterling.appraisal.screening import LabelAgreement, Screening
from sterling.crypto.entropy import SecretRandom
from sterling.data.dataset import Dataset
from sterling.data.rows import RowSource
from sterling.enclave.checkpoints import Checkpoints
from sterling.enclave.ledger import Ledger
from sterling.enclave.metrics import metrics_of, private_metrics
from sterling.enclave.split import split
from sterling.errors import UsageError
from sterling.privacy.bundle import ModelBundle
from sterling.privacy.dpsgd import DPSGD, TrainResult
from sterling.privacy.job import Job
from sterling.privacy.mechanisms import DiscreteLaplace, Gaussian, Mechanism
from sterling.privacy.plan import TrainingPlan

Progress = Callable[[int], None]  # the public step reached (of `plan.schedule_steps`)
Keep = Callable[[dict[str, float]], list[int]]  # the consumer contract's hook: values → listing ids kept


# ---------------------------------------------------------------------- outcome


@dataclass
class Outcome:
    bundle: ModelBundle  # without parameters when no model was trained (`has_model`)
    steps: int  # of the final run
    stopped_by_budget: bool
    ran: list[list[Mechanism]]  # per listing: what touched its data (the receipt's charges)
    epsilon_per_listing: list[float]
    metrics: dict[str, float]
    appraisal: AppraisalResult
    kept: list[bool]  # per listing: was its data in the final model
    info: dict[str, Any] = field(default_factory=dict)
    #: What the enclave keeps to attribute served predictions (only with an attribution release).
    attribution: Any = None

    @property
    def has_model(self) -> bool:
        return self.bundle.has_model

    @property
    def epsilon_spent(self) -> float:
        return max(self.epsilon_per_listing)


# --------------------------------------------------------------------- training


class Training:
    """One verified job on decrypted data (module docstring). Settings here; `run()` does it."""

    def __init__(
        self,
        job: Job,
        plan: TrainingPlan,
        datasets: Sequence[Dataset | RowSource],
        *,
        listing_ids: Sequence[int],
        rng: SecretRandom,
        validation: Dataset | None = None,
        keep: Keep | None = None,
        progress: Progress | None = None,
        prior: Sequence[Mechanism] = (),
        reserved_epsilon: float | None = None,
    ) -> None:
        if plan.job_hash != "0x" + job.job_hash().hex():
            raise UsageError("the plan was verified for another job")
        if tuple(listing_ids) != plan.listings:
            raise UsageError(f"the plan is for listings {list(plan.listings)}, not {list(listing_ids)}")
        self.job, self.plan = job, plan
        self.listing_ids = list(listing_ids)
        self.rng = rng
        self.keep, self._progress = keep, progress
        self.data = split(job, datasets, validation)
        if len(self.data.y_train) != plan.train_rows:
            raise UsageError(
                f"{len(self.data.y_train)} training rows, but the plan counted {plan.train_rows}"
            )
        self.parts = len(datasets)
        if self.data.stream is not None:
            self._check_streamable()
        self.ledger = Ledger(self.parts, tuple(prior))
        self.reserved = reserved_epsilon
        self.steps = self._allowed_steps()

    def _check_streamable(self) -> None:
        """Refuse, before anything runs, what streamed data cannot do yet (passes needing all rows)."""
        unsupported = [
            n for n in ("appraisal.values", "appraisal.screening", "attribution") if self.plan.release(n)
        ]
        if self.job.training.oblivious:
            unsupported.append("oblivious training")
        if unsupported:
            raise UsageError(
                f"a dataset streamed from storage (larger than the in-memory limit) cannot use "
                f"{', '.join(unsupported)} yet"
            )

    # ---- the budget: a takeover that must also pay for what an earlier holder released

    def _allowed_steps(self) -> int:
        """The final run's steps: the plan's, or fewer when an earlier holder's releases are charged too."""
        plan = self.plan
        if not self.ledger.prior or self.reserved is None:
            return plan.steps

        def fits(n: int) -> bool:
            path = plan.retrained(n) if plan.retrains else plan.one_run(n)
            return plan.epsilon((*self.ledger.prior, *path)) <= self.reserved  # type: ignore[operator]

        if fits(plan.steps):
            return plan.steps
        lo, hi = 0, plan.steps  # fits(lo) may be false too: then nothing more is trained
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo if fits(lo) else -1

    # ---- pieces

    def _engine(self, name: str, seed_offset: int) -> DPSGD:
        t, plan = self.job.training, self.plan
        return DPSGD(
            self.job.model,
            self.data.in_shape,
            clipping_norm=plan.clipping_norm,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=self.steps,
            learning_rate=t.learning_rate,
            optimizer=t.optimizer,
            oblivious=t.oblivious,
            overflow_per_step=plan.oblivious.per_step if plan.oblivious else 1e-9,
            seed=t.seed + seed_offset,
            rng=self.rng.child(f"dpsgd.{name}"),
            device="cpu",
        )

    def _picker(self) -> Checkpoints | None:
        """Best-epoch choice, on the consumer's own validation set only (the verifier allows no other)."""
        ev, data = self.job.evaluation, self.data
        if ev.checkpoint == "last" or data.eval_is_private or not len(data.y_eval):
            return None
        per_epoch = max(1, round(1 / self.plan.sample_rate))
        return Checkpoints(data.x_eval, data.y_eval, self.job.model.loss, ev.checkpoint, per_epoch)

    def _fit(
        self,
        engine: DPSGD,
        entry: Any,
        picker: Checkpoints | None,
        rows: torch.Tensor | None,
        *,
        until: int | None,
        offset: int,
    ) -> TrainResult:
        """Train `engine` (on the rows in `rows`, or all) up to step `until`, reporting public steps."""

        def on_step(log: Any) -> None:
            entry.steps = log.step
            if self._progress is not None:
                self._progress(offset + log.step)
            if picker is not None:
                picker.seen(engine.model, log.step)

        stream = self.data.stream
        if stream is not None:
            train = stream.train if rows is None else stream.train.subset(rows)
            return engine.fit_rows(train, on_step=on_step, until=until)
        x, y = (
            (self.data.x_train, self.data.y_train)
            if rows is None
            else (self.data.x_train[rows], self.data.y_train[rows])
        )
        return engine.fit(x, y, on_step=on_step, until=until)

    def _appraisal_data(self) -> AppraisalData:
        d = self.data
        return AppraisalData(
            x=d.x_train,
            y=d.y_train,
            owner=d.owner,
            parts=self.parts,
            x_val=d.x_eval,
            y_val=d.y_eval,
            loss=self.job.model.loss,
        )

    def _appraise(self, model: torch.nn.Module) -> tuple[AppraisalResult, Screening | None, float | None]:
        """The plan's appraisal releases on `model`: influence values and the label screen.

        Also returns two standard deviations of the values' noise below zero, reported to the
        consumer as the level below which a value is clearly negative (flags come from the screen).
        """
        values, screening = self.plan.release("appraisal.values"), self.plan.release("appraisal.screening")
        if not isinstance(values, DiscreteLaplace) or not isinstance(screening, DiscreteLaplace):
            return RowShare().fit(model, self._appraisal_data()), None, None
        from sterling.appraisal.release import NETWORK_ITERATIONS, NETWORK_TOL, PrivateInfluence
        from sterling.appraisal.solvers import ConjugateGradient

        # An MLP is valued over every parameter (CG on the validation loss's Gauss-Newton matrix): it
        # ranked providers better than its last layer, in well under a second. A CNN keeps the last
        # layer: on the demo's CNN the full release took minutes on this machine and did not rank a
        # fake provider lower, while the last layer caught a pixel-noise seller (docs/appraisal.md).
        # Logistic regression keeps its exact head solve either way.
        convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        appraiser = PrivateInfluence(
            clip=self.plan.clipping_norm,
            epsilon=values.epsilon,
            cg=ConjugateGradient(tol=NETWORK_TOL, max_iter=NETWORK_ITERATIONS),
            head_only=convolutional,
            rng=self.rng.child("appraisal.values"),
        )
        result = appraiser.fit(model, self._appraisal_data())
        self.ledger.released(values)
        screen = LabelAgreement(epsilon=screening.epsilon, rng=self.rng.child("appraisal.screening"))
        screened = screen.fit(model, self._appraisal_data())
        self.ledger.released(screening)
        return result, screened, -2 * appraiser.noise_sd

    def _choose(
        self, appraisal: AppraisalResult, screening: Screening | None
    ) -> tuple[list[bool], list[bool]]:
        """(kept, flagged) per listing: the consumer's `keep` on the released values, less the flagged."""
        flagged = list(screening.flagged()) if screening is not None else [False] * self.parts
        kept = [True] * self.parts
        if self.keep is not None and appraisal.method != "row_share":
            values = {str(lid): v for lid, v in zip(self.listing_ids, appraisal.per_provider, strict=True)}
            chosen = set(self.keep(values))
            kept = [lid in chosen for lid in self.listing_ids]
        if self.job.release.drop_flagged:
            kept = [k and not f for k, f in zip(kept, flagged, strict=True)]
        return kept, flagged

    def _attribution(self, model: torch.nn.Module, kept: list[bool]) -> Any:
        g = self.plan.release("attribution")
        if not isinstance(g, Gaussian):
            return None
        from sterling.appraisal import attribution as attr

        d, rows = self.data, self.data.rows_of(kept)
        state = attr.build(
            model,
            x=d.x_train[rows],
            y=d.y_train[rows],
            owner=d.owner[rows.numpy()],
            parts=self.parts,
            loss=self.job.model.loss,
            clip=self.plan.clipping_norm,
            mechanism=g,
            rng=self.rng.child("attribution"),
            x_val=None if d.eval_is_private else d.x_eval,
            y_val=None if d.eval_is_private else d.y_eval,
        )
        self.ledger.released(g, [i for i, k in enumerate(kept) if k])
        return state

    def _metrics(self, model: torch.nn.Module) -> dict[str, float]:
        d, ev = self.data, self.job.evaluation
        if not d.eval_is_private:
            return metrics_of(model, d.x_eval, d.y_eval, loss=self.job.model.loss, wanted=ev.metrics)
        releases = [
            r for r in self.plan.final if isinstance(r, DiscreteLaplace) and r.name.startswith("metrics.")
        ]
        if not releases or not len(d.y_eval):
            return {}
        x_eval = d.x_eval
        if d.stream is not None and d.stream.held_out is not None:
            # Streamed rows: the model's outputs in batches, then the same release on them.
            model, x_eval = torch.nn.Identity(), d.stream.held_out.logits(model)
        out = private_metrics(
            model,
            x_eval,
            d.y_eval,
            loss=self.job.model.loss,
            releases=releases,
            rng=self.rng.child("metrics"),
        )
        for r in releases:
            self.ledger.released(r)
        return out

    # ---- the job

    def run(self) -> Outcome:
        plan = self.plan
        if self.steps < 0 or (plan.retrains and self.steps < (plan.pilot_steps or 0)):
            return self._without_model(
                RowShare().fit(torch.nn.Identity(), self._appraisal_data()), None, None, 0
            )
        engine, picker = self._engine("first", 0), self._picker()
        first = self.ledger.run(plan.run)
        fitted = self._fit(
            engine, first, picker, None, until=plan.pilot_steps if plan.retrains else None, offset=0
        )
        # Appraisal looks at the best model so far (by the consumer's validation set, as released).
        looked_at = picker.best_copy(engine.model) if picker is not None else engine.model
        appraisal, screening, flag_below = self._appraise(looked_at)
        kept, flagged = (
            self._choose(appraisal, screening)
            if plan.retrains
            else ([True] * self.parts, [False] * self.parts)
        )
        if plan.retrains and not all(kept):
            first.template = plan.pilot  # someone is dropped: the first run stays a pilot
        if plan.retrains and not any(kept):
            return self._without_model(appraisal, screening, flag_below, first.steps, flagged=flagged)
        final = engine
        if plan.retrains and not all(kept):
            # The final model trains afresh without the dropped providers.
            final, picker = self._engine("second", 1), self._picker()
            entry = self.ledger.run(plan.run, [i for i, k in enumerate(kept) if k])
            pilot = first.steps
            fitted = self._fit(final, entry, picker, self.data.rows_of(kept), until=None, offset=pilot)
        elif fitted.steps < self.steps:
            # No one dropped: the pilot goes on to its run's end; one run, one ε.
            fitted = self._fit(engine, first, picker, None, until=None, offset=0)
        if picker is not None:
            picker.restore(final.model, fitted.steps)
        attribution = self._attribution(final.model, kept)
        metrics = self._metrics(final.model)
        return self._outcome(
            final.model, fitted, appraisal, screening, flag_below, kept, flagged, metrics, attribution, picker
        )

    # ---- what is released

    def _appraisal_json(
        self,
        appraisal: AppraisalResult,
        screening: Screening | None,
        flag_below: float | None,
        kept: list[bool],
        flagged: list[bool],
    ) -> dict[str, Any]:
        ids = self.listing_ids
        released = appraisal.method != "row_share"
        return {
            "method": appraisal.method,
            "values": {str(lid): v for lid, v in zip(ids, appraisal.per_provider, strict=True)}
            if released
            else None,
            "flagged": [lid for lid, f in zip(ids, flagged, strict=True) if f],
            "screening": None
            if screening is None
            else {
                **screening.to_json(),
                "values": {str(lid): v for lid, v in zip(ids, screening.sums, strict=True)},
            },
            "kept": [lid for lid, k in zip(ids, kept, strict=True) if k],
            "flag_threshold": flag_below if released else None,
        }

    def _info(self, ran: list[list[Mechanism]], eps: list[float], **extra: Any) -> dict[str, Any]:
        plan = self.plan
        return {
            "job_hash": "0x" + self.job.job_hash().hex(),
            "plan_sha256": "0x" + plan.sha256().hex(),
            "neighbours": plan.neighbours,
            "steps_planned": plan.steps,
            "pilot_steps": plan.pilot_steps,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "delta": plan.delta,
            "epsilon_spent": max(eps),
            "epsilon_per_listing": {str(lid): e for lid, e in zip(self.listing_ids, eps, strict=True)},
            "metrics_private": self.data.eval_is_private,
            "train_rows": len(self.data.y_train),
            "mechanisms_run": sum(len(r) for r in ran),
            **extra,
        }

    def _charged(self) -> tuple[list[list[Mechanism]], list[float]]:
        ran = self.ledger.mechanisms()
        return ran, [self.plan.epsilon(r) for r in ran]

    def _without_model(
        self,
        appraisal: AppraisalResult,
        screening: Screening | None,
        flag_below: float | None,
        steps_run: int,
        *,
        flagged: list[bool] | None = None,
    ) -> Outcome:
        """The consumer's contract dropped every provider (or nothing more fits the budget): no model."""
        flagged = flagged or [False] * self.parts
        kept = [False] * self.parts
        ran, eps = self._charged()
        info = self._info(
            ran,
            eps,
            model_released=False,
            reason="the consumer's contract kept no provider"
            if steps_run
            else "no training fits the budget left",
            steps=0,
            steps_run=steps_run,
            training_runs=1 if steps_run else 0,
            stopped_by_budget=not steps_run,
            metrics={},
            checkpoint={"rule": "last"},
            appraisal=self._appraisal_json(appraisal, screening, flag_below, kept, flagged),
        )
        bundle = ModelBundle(self.job.model, self.data.in_shape, self.data.classes, {}, info)
        return Outcome(bundle, 0, not steps_run, ran, eps, {}, appraisal, kept, info)

    def _outcome(
        self,
        model: torch.nn.Module,
        fitted: TrainResult,
        appraisal: AppraisalResult,
        screening: Screening | None,
        flag_below: float | None,
        kept: list[bool],
        flagged: list[bool],
        metrics: dict[str, float],
        attribution: Any,
        picker: Checkpoints | None,
    ) -> Outcome:
        ran, eps = self._charged()
        second = self.plan.retrains and not all(kept)
        info = self._info(
            ran,
            eps,
            model_released=True,
            steps=fitted.steps,
            # Every step trained, the pilot's included: what the enclave's progress counted.
            steps_run=(self.plan.pilot_steps or 0) + fitted.steps if second else fitted.steps,
            training_runs=2 if second else 1,
            stopped_by_budget=self.steps < self.plan.steps,
            metrics=metrics,
            # The final run's validation curve and the epoch released (the consumer's data: no ε).
            checkpoint=picker.to_json() if picker is not None else {"rule": "last"},
            appraisal=self._appraisal_json(appraisal, screening, flag_below, kept, flagged),
        )
        d = self.data
        bundle = ModelBundle.from_module(
            model, graph=self.job.model, in_shape=d.in_shape, classes=d.classes, info=info
        )
        return Outcome(
            bundle,
            fitted.steps,
            self.steps < self.plan.steps,
            ran,
            eps,
            metrics,
            appraisal,
            kept,
            info,
            attribution,
        )
