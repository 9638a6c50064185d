"""Scores of a model on labelled rows, and their DP release when the rows are private.

Metrics on the consumer's own validation set are exact (the data is theirs);
metrics on private held-out rows leave the enclave only through
`private_metrics`: integer sums (the count of correct predictions; each
row's clipped loss rounded to a grid) with exact discrete Laplace noise from
the enclave's secret stream, divided by the public held-out count. AUC, which
has no bounded sensitivity, never leaves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sterling.crypto.entropy import SecretRandom
from sterling.privacy.mechanisms import DiscreteLaplace
from sterling.privacy.noise import Grid, release_sums

#: Per-example losses are clipped here before a private mean is released, bounding its sensitivity.
LOSS_CLIP = 10.0
#: A row's clipped loss lies in [0, LOSS_CLIP]: replacing the row moves the sum by at most that range.
LOSS_GRID = Grid(LOSS_CLIP, lo=0, hi=1)


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary AUC, or macro one-vs-rest AUC over the classes present in `labels` (NaN with one class)."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    p = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
    return float(roc_auc_score(labels, p, multi_class="ovr", labels=present))


def _scores(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class probabilities, per-row loss) of `model` on (x, y)."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        if loss == "logistic":
            p1 = torch.sigmoid(logits.squeeze(-1))
            probs = torch.stack([1 - p1, p1], dim=1)
            per = torch.nn.functional.binary_cross_entropy_with_logits(
                logits.squeeze(-1), y.float(), reduction="none"
            )
        else:
            probs = torch.softmax(logits, dim=-1)
            per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return probs, per


def metrics_of(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str, wanted: Sequence[str]
) -> dict[str, float]:
    """Accuracy, mean (clipped) loss and AUC of `model` on (x, y), without noise."""
    probs, per = _scores(model, x, y, loss)
    out: dict[str, float] = {}
    if "accuracy" in wanted:
        out["accuracy"] = float((probs.argmax(dim=1) == y).float().mean())
    if "loss" in wanted:
        out["loss"] = float(per.clamp(max=LOSS_CLIP).mean())
    if "auc" in wanted:
        out["auc"] = macro_auc(probs.numpy(), y.numpy())
    return out


def private_metrics(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str,
    releases: Sequence[DiscreteLaplace],
    rng: SecretRandom,
) -> dict[str, float]:
    """Each metric the plan releases (`metrics.accuracy`, `metrics.loss`), measured on n private rows.

    Accuracy is the count of correct predictions (replacing a row moves it by at most 1) plus
    discrete Laplace noise, over n; the mean loss is the sum of each row's clipped loss on a grid
    (moved by at most LOSS_CLIP) plus noise, over n. n, the held-out count, follows from the
    public row counts. Results are clipped to their range (post-processing).
    """
    probs, per = _scores(model, x, y, loss)
    n = max(1, len(y))
    out = {}
    for r in releases:
        if r.name == "metrics.accuracy":
            exact = int((probs.argmax(dim=1) == y).sum())
            (noisy,) = release_sums(rng, [exact], epsilon=r.epsilon, sensitivity=r.sensitivity)
            out["accuracy"] = float(np.clip(noisy / n, 0.0, 1.0))
        elif r.name == "metrics.loss":
            exact = int(LOSS_GRID.quantize(per.clamp(max=LOSS_CLIP).numpy()).sum())
            (noisy,) = release_sums(rng, [exact], epsilon=r.epsilon, sensitivity=r.sensitivity)
            out["loss"] = float(np.clip(LOSS_GRID.value(noisy) / n, 0.0, LOSS_CLIP))
    return out
