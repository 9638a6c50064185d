"""Choosing which DP-trained model to release, by the consumer's own validation set.

DP-SGD's (ε, δ) covers the release of every intermediate model, not only the
last one: the accountant composes every noisy step. Scoring the models after
each epoch on the consumer's own validation set, and releasing the best, is
therefore post-processing and costs no ε. The verifier refuses the same on
private held-out rows, where the choice itself would leak them.

The validation curve (one point per epoch) is on the consumer's data too, so it
leaves the enclave with the model: it is the DP model's learning curve.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field

import torch

from sterling.enclave.metrics import metrics_of


@dataclass
class Checkpoints:
    """Scores the model every `every` steps on (x, y) and keeps a copy of the best one."""

    x: torch.Tensor
    y: torch.Tensor
    loss: str
    by: str  # "best_accuracy" or "best_loss"
    every: int
    curve: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    _best: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _best_score: float = float("-inf")

    def __post_init__(self) -> None:
        if self.by not in ("best_accuracy", "best_loss"):
            raise ValueError(f"unknown checkpoint rule {self.by!r}")
        self.every = max(1, self.every)

    def _score(self, model: torch.nn.Module, step: int) -> None:
        was = model.training
        try:
            m = metrics_of(model, self.x, self.y, loss=self.loss, wanted=("accuracy", "loss"))
        finally:
            model.train(was)
        self.curve.append({"step": step, **m})
        # Ties go to the later model: it has seen more data for the same ε.
        score = m["accuracy"] if self.by == "best_accuracy" else -m["loss"]
        if score >= self._best_score:
            self._best_score, self.best_step = score, step
            self._best = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def seen(self, model: torch.nn.Module, step: int) -> None:
        """Call after every step; scores at the end of each epoch."""
        if step % self.every == 0:
            self._score(model, step)

    def restore(self, model: torch.nn.Module, last_step: int) -> None:
        """Score the last model if its step was not scored, then load the best into `model`."""
        if not self.curve or self.curve[-1]["step"] != last_step:
            self._score(model, last_step)
        if self._best is not None:
            model.load_state_dict(self._best)

    def best_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of `model` with the best weights scored so far (`model` itself if none were).

        The run can go on from `model`; the copy is for looking at (appraisal of a pilot).
        """
        if self._best is None:
            return model
        copy = deepcopy(model)
        copy.load_state_dict(self._best)
        return copy

    def to_json(self) -> dict[str, object]:
        return {"rule": self.by, "selected_step": self.best_step, "curve": self.curve}
