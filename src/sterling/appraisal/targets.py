"""What an appraiser measures on the consumer's validation set: the quantity whose change is a value.

A target is a per-example function of the logits (a `terms.Score`), lower
is better, averaged over the validation rows. Values are its predicted
*increase* when data is removed, so for every target positive data helps.

- `ValidationLoss`: the model's own loss (cross-entropy). Its change is what
  leave-one-out retraining measures, so valuation and payments use it.
- `ValidationMargin`: minus the log-odds of the true class,
  −log(p_y/(1−p_y)); for two classes −(z_y − z_other), for the logistic
  loss ∓z. Every validation row weighs the same in its gradient, where the
  loss's gradient is carried by the few rows the model gets wrong; Sterling
  uses it to screen rows (mislabelled ones), see docs/appraisal.md.
"""

from __future__ import annotations

from typing import Protocol

import torch

from sterling.appraisal.terms import per_example_loss


class Target(Protocol):
    name: str

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor: ...


class ValidationLoss:
    name = "loss"

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
        return per_example_loss(logits, y, loss)


class ValidationMargin:
    name = "margin"

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
        if loss == "logistic":
            z = logits.reshape(-1)
            return -torch.where(y.bool(), z, -z)
        log_p = torch.log_softmax(logits, dim=1)
        log_py = log_p.gather(1, y[:, None])[:, 0]
        # log(1 − p_y) = logsumexp of the other classes' log-probabilities
        others = log_p.scatter(1, y[:, None], float("-inf"))
        return -(log_py - torch.logsumexp(others, dim=1))
