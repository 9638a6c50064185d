"""Influence functions (Koh & Liang 2017): the value of each training row without retraining.

The methods live along their ideas; this module gathers their public names:

- `terms`: the trained model linearised on a dataset (`HeadTerms` in closed
  form for the last linear layer, `FullTerms` for every parameter);
- `solvers`: (H + λI)⁻¹ v directly or by conjugate gradients, and the
  damping rule `MeanCurvature`;
- `targets`: what is measured on the consumer's validation set
  (`ValidationLoss`, `ValidationMargin`);
- `first_order`: `ExactInfluence`, `LastLayerInfluence`,
  `ConjugateGradientInfluence` (per-example values, provider sums);
- `groups`: `NewtonGroupInfluence` (one Newton step per provider);
- `heldout`: `HeldOutFit` (each provider's labels under the model fitted
  without it: the fake-data screen).

All of it is computed in float64 on the trained model; nothing retrains.
"""

from __future__ import annotations

from sterling.appraisal.first_order import (
    ConjugateGradientInfluence,
    ExactInfluence,
    Influence,
    LastLayerInfluence,
)
from sterling.appraisal.groups import GroupSteps, NewtonGroupInfluence
from sterling.appraisal.heldout import HeldOutFit
from sterling.appraisal.solvers import ConjugateGradient, Damping, Factored, MeanCurvature, solve_direct
from sterling.appraisal.targets import Target, ValidationLoss, ValidationMargin
from sterling.appraisal.terms import (
    CHUNK,
    F64,
    FullTerms,
    HeadTerms,
    Score,
    Terms,
    loss_derivatives,
    penultimate,
    per_example_loss,
    split_head,
)

__all__ = [
    "CHUNK",
    "F64",
    "ConjugateGradient",
    "ConjugateGradientInfluence",
    "Damping",
    "ExactInfluence",
    "Factored",
    "FullTerms",
    "GroupSteps",
    "HeadTerms",
    "HeldOutFit",
    "Influence",
    "LastLayerInfluence",
    "MeanCurvature",
    "NewtonGroupInfluence",
    "Score",
    "Target",
    "Terms",
    "ValidationLoss",
    "ValidationMargin",
    "loss_derivatives",
    "penultimate",
    "per_example_loss",
    "solve_direct",
    "split_head",
]
