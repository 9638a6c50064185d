"""Scores of a model on labelled rows, and their DP release when the rows are private.

Metrics on the consumer's own validation set are exact (the data is theirs);
metrics on private held-out rows leave the enclave only through
`private_metrics` (the Laplace mechanism), and AUC, which has no bounded
sensitivity, never does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Per-example losses are clipped here before a private mean is released, bounding its sensitivity.
LOSS_CLIP = 10.0


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


def metrics_of(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str, wanted: Sequence[str]
) -> dict[str, float]:
    """Accuracy, mean (clipped) loss and AUC of `model` on (x, y), without noise."""
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
    out: dict[str, float] = {}
    if "accuracy" in wanted:
        out["accuracy"] = float((probs.argmax(dim=1) == y).float().mean())
    if "loss" in wanted:
        out["loss"] = float(per.clamp(max=LOSS_CLIP).mean())
    if "auc" in wanted:
        out["auc"] = macro_auc(probs.numpy(), y.numpy())
    return out


def private_metrics(
    exact: dict[str, float], *, n: int, epsilon: float, rng: np.random.Generator
) -> dict[str, float]:
    """Laplace mechanism on each metric of n private rows, ε split evenly among them.

    Changing one row moves accuracy by at most 1/n and the clipped mean loss
    by at most LOSS_CLIP/n (n, the held-out count, follows from the public row
    counts). AUC has no such bound, so the verifier refuses it on private rows.
    """
    sensitivity = {"accuracy": 1.0 / n, "loss": LOSS_CLIP / n}
    share = epsilon / max(1, len(exact))
    out = {}
    for name, value in exact.items():
        noisy = value + rng.laplace(0.0, sensitivity[name] / share)
        out[name] = float(np.clip(noisy, 0.0, 1.0 if name == "accuracy" else LOSS_CLIP))
    return out
