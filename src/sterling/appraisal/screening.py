"""Screening for fake data: do a provider's labels agree with what the DP model learnt from everyone?

Influence on the validation loss says how a provider's rows move the model;
on a weak DP model that is far from its optimum it can call fake data
useful (measured on the demo's DP CNN: photographs graded backwards, and
photographs with shuffled grades, both come out *positive*, because any rows
that spread probability over the rare grades lower the cross-entropy of an
over-confident model). A buyer who does not trust sellers also asks the
plainer question a screener asks: does the model predict this seller's
labels at least as well as it predicts the buyer's own?

Per training row, with θ the DP-trained model and π the add-one smoothed
class frequencies of the consumer's validation labels,

    s_i = clip_[−B, B]( log p_θ(y_i | x_i) − log π(y_i) )        (nats)

and per provider the released sum  S_p = Σ_{i∈p} s_i + noise, the scores
rounded to a grid of B/2¹⁶ and summed as integers, the noise exact discrete
Laplace of scale 2B/ε from the enclave's secret stream
(`sterling.privacy.noise`).

Privacy: given θ (already released under DP-SGD's guarantee) and the
consumer's own labels, s_i depends on row i alone and lies in [−B, B], so
replacing one row of p moves S_p by at most 2B and no other provider's sum
at all: each release is ε-DP for p's data (parallel composition), composed
with the rest of the job in its one accountant.

Flagging: the same score on the consumer's validation rows (their data, no
ε) gives a reference mean m and standard deviation σ. Provider p, with n_p
rows (a public count), is flagged when its mean S_p/n_p is below

    m − 3σ/√n_p − M/n_p,        α = FALSE_FLAG_RATE = 10⁻⁴,

a one-sided test that honest rows from the buyer's distribution pass (the
model was trained on them, so they score at or above the buyer's own rows)
and that labels unrelated to the images, or graded backwards, fail. M is
the noise's own one-sided tail: the smallest margin with P(noise ≤ −M) ≤ α,
exactly, for the discrete Laplace (p^m/(1 + p) at m grid steps), so the
noise alone flags an honest provider with probability at most α. (It is
about ln(1/(2α))·2B/ε ≈ 8.5 noise scales. The margin was once two standard
deviations, a 3% tail: in the demo, with ten honest screenings per run, an
honest provider with 99 rows was flagged in about one run in twenty.) The
price is power on small providers at small ε: a provider is only ever
flagged if M/n_p is well below the 2B range of a row's score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sterling.appraisal import AppraisalData
from sterling.crypto.entropy import SecretRandom
from sterling.errors import UsageError
from sterling.privacy.mechanisms import DiscreteLaplace, screening_release
from sterling.privacy.noise import Grid, discrete_laplace_tail, release_sums

#: B: one row's score is clipped to ±B nats.
SCORE_CLIP = 3.0
#: α: the most often the release's noise alone may flag an honest provider, per screening.
FALSE_FLAG_RATE = 1e-4
#: The grid the scores are rounded to before they are summed.
GRID = Grid(SCORE_CLIP)


def noise_margin(release: DiscreteLaplace, alpha: float = FALSE_FLAG_RATE) -> float:
    """M (nats): the smallest margin the release's noise falls below with probability ≤ α."""
    b = float(release.scale)
    p = math.exp(-1 / b)
    # p^m/(1 + p) ≤ α  ⇔  m ≥ b·ln(1/(α(1 + p))); then step to the exact smallest m.
    m = max(1, math.ceil(b * math.log(1 / (alpha * (1 + p)))))
    while m > 1 and discrete_laplace_tail(release.scale, m - 1) <= alpha:
        m -= 1
    while discrete_laplace_tail(release.scale, m) > alpha:
        m += 1
    return GRID.value(m)


def _scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, log_prior: torch.Tensor, loss: str
) -> np.ndarray:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(x[i : i + 1024]) for i in range(0, len(x), 1024)]) if len(x) else None
    finally:
        model.train(was)
    if logits is None:
        return np.zeros(0)
    if loss == "logistic":
        z = logits.reshape(-1).double()
        log_p = torch.nn.functional.logsigmoid(torch.where(y.bool(), z, -z))
    else:
        log_p = torch.log_softmax(logits.double(), dim=1).gather(1, y[:, None])[:, 0]
    return (log_p - log_prior[y]).clamp(-SCORE_CLIP, SCORE_CLIP).numpy()


@dataclass(frozen=True)
class Screening:
    """Released per-provider sums, with what flagging compared them against."""

    method: str
    sums: tuple[float, ...]  # S_p, released with Laplace noise (nats)
    rows: tuple[int, ...]  # n_p, public
    reference_mean: float  # m, on the consumer's validation rows
    reference_sd: float  # σ
    margin: float  # M, the noise's α-tail (0 for noiseless sums)
    epsilon: float

    def thresholds(self) -> tuple[float, ...]:
        """Per provider: the mean score below which it is flagged."""
        return tuple(
            self.reference_mean - 3 * self.reference_sd / math.sqrt(max(1, n)) - self.margin / max(1, n)
            for n in self.rows
        )

    def means(self) -> tuple[float, ...]:
        return tuple(s / max(1, n) for s, n in zip(self.sums, self.rows, strict=True))

    def flagged(self) -> tuple[bool, ...]:
        return tuple(
            n > 0 and m < t for m, t, n in zip(self.means(), self.thresholds(), self.rows, strict=True)
        )

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "mean_per_row": [round(m, 4) for m in self.means()],
            "threshold_per_row": [round(t, 4) for t in self.thresholds()],
            "reference_mean": round(self.reference_mean, 4),
            "epsilon": self.epsilon,
        }


class LabelAgreement:
    """Screens providers by how well the DP model predicts their labels (module docstring).

    With `epsilon` the sums are released with discrete Laplace noise of scale 2B/ε; `epsilon=None`
    gives the noiseless sums, for tests only (they must not leave the enclave).
    """

    def __init__(self, *, epsilon: float | None, rng: SecretRandom | None = None) -> None:
        if epsilon is not None and epsilon <= 0:
            raise UsageError(f"screening needs epsilon > 0, got {epsilon}")
        self.epsilon = epsilon
        self.release = screening_release(epsilon) if epsilon is not None else None
        self.rng = rng if rng is not None else SecretRandom.from_os()

    def fit(self, model: nn.Module, data: AppraisalData) -> Screening:
        if len(data.y_val) == 0:
            raise UsageError("screening compares providers with your own validation rows: none were given")
        classes = 2 if data.loss == "logistic" else _out_classes(model)
        counts = torch.bincount(data.y_val, minlength=classes).double() + 1
        log_prior = torch.log(counts / counts.sum())
        train = _scores(model, data.x, data.y, log_prior, data.loss)
        val = _scores(model, data.x_val, data.y_val, log_prior, data.loss)
        rows = tuple(int((data.owner == p).sum()) for p in range(data.parts))
        if self.release is None:
            sums = tuple(float(train[data.owner == p].sum()) for p in range(data.parts))
            method, margin = "label-agreement:noiseless", 0.0
        else:
            steps = GRID.quantize(train)
            exact = [int(steps[data.owner == p].sum()) for p in range(data.parts)]
            noisy = release_sums(
                self.rng, exact, epsilon=self.release.epsilon, sensitivity=self.release.sensitivity
            )
            sums = tuple(GRID.value(z) for z in noisy)
            method = f"label-agreement+discrete_laplace(B={SCORE_CLIP:g},eps={self.release.epsilon:g})"
            margin = noise_margin(self.release)
        return Screening(
            method=method,
            sums=sums,
            rows=rows,
            reference_mean=float(val.mean()),
            reference_sd=float(val.std()),
            margin=margin,
            epsilon=self.epsilon or 0.0,
        )


def _out_classes(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else 2
