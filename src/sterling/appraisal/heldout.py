"""Held-out fit: does a model trained on everyone else predict this provider's labels?

A buyer who does not trust sellers asks of each provider's rows what
cross-validation asks: fitted without them, does the model predict their
labels better than the label frequencies alone would? For provider p, with
Δθ_p the Newton step without its rows (`groups.GroupSteps`),

    value_p = Σ_{i∈p} [ −log π(y_i) − ℓ(θ + Δθ_p; x_i, y_i) ]

in nats: π the class frequencies of the consumer's validation labels
(add-one smoothed). Honest data scores well above zero; random labels, or
features unrelated to them, score at or below zero (a model that is
confident on unrelated features does worse than guessing). Unlike the
validation-loss value it does not depend on a few hundred validation rows,
which is why Sterling flags fake data by it (docs/appraisal.md: the exact
leave-one-provider-out validation loss itself ranks a noise seller lowest in
only 8 of 10 seeds).

Per example, for a head solved directly, the same with each row left out
alone, in closed form: with M = N(H + λI), J_i = (I⊗φ_i)S_i (S_iS_iᵀ = A_i),
T_i = (I⊗φ_i)ᵀM⁻¹(I⊗φ_i) and Q_i = S_iᵀT_iS_i, Woodbury gives the logits of
row i under the Newton step without it

    z_{-i} = z_i + T_i r_i + T_i S_i (I − Q_i)⁻¹ S_iᵀ T_i r_i,

for one logit z_i + t_i r_i/(1 − h_i) with the leverage h_i = a_i t_i: the
approximate leave-one-out of GLMs, exact as the Newton step is for a
quadratic objective (tested against retraining).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sterling.appraisal import AppraisalData, AppraisalResult
from sterling.appraisal.first_order import ExactInfluence, Influence, check
from sterling.appraisal.groups import GroupSteps
from sterling.appraisal.terms import CHUNK, F64, HeadTerms, curvature_factor, per_example_loss


def prior_loss(y_val: torch.Tensor, classes: int) -> torch.Tensor:
    """−log π(k) for each class k, π the add-one smoothed frequencies of the validation labels."""
    counts = torch.bincount(y_val, minlength=classes).to(F64) + 1
    return -torch.log(counts / counts.sum())


def loo_logits(train: HeadTerms, groups: GroupSteps) -> torch.Tensor:
    """(n, K): each row's logits after the Newton step without that row alone (module docstring)."""
    assert groups.factored is not None
    n, k, d = train.n, train.classes, train.width
    eye = torch.eye(k, dtype=F64)
    out = []
    for start in range(0, n, CHUNK):
        phi = train.phi[start : start + CHUNK]
        m = len(phi)
        rows = (eye[None, :, :, None] * phi[:, None, None, :]).reshape(m * k, k * d)  # e_k ⊗ φ_i
        half = groups.factored.half_solve(rows.T)
        if half is None:  # no Cholesky (indefinite H + λI): solve directly
            t = rows @ groups.factored.solve(rows.T)
            t = torch.stack([t[i * k : (i + 1) * k, i * k : (i + 1) * k] for i in range(m)])
        else:
            c = half.T.reshape(m, k, -1)
            t = c @ c.transpose(1, 2)
        t = t / max(1, n)  # M = N(H + λI)
        s = curvature_factor(train.curvature[start : start + CHUNK])
        r = train.residual[start : start + CHUNK, :, None]
        q = s.transpose(1, 2) @ t @ s
        inner = torch.linalg.solve(eye - q, s.transpose(1, 2) @ t @ r)
        out.append((t @ r + t @ s @ inner)[:, :, 0])
    shift = torch.cat(out) if out else torch.zeros(0, k, dtype=F64)
    return train.logits() + shift


class HeldOutFit:
    """Per provider, the log-likelihood gain (nats) of its labels under the model fitted without it.

    `influence` gives the terms, solver and damping of the Newton step (its target is not used).
    Per-example values (the same gain with each row left out alone) for heads solved directly.
    """

    def __init__(self, *, influence: Influence | None = None) -> None:
        self.influence = influence or ExactInfluence()

    @property
    def name(self) -> str:
        return "heldout_fit_" + self.influence.name

    def fit(self, model: nn.Module, data: AppraisalData) -> AppraisalResult:
        inner = self.influence
        train = inner.terms(model, data.x, data.y, data.loss)
        groups = GroupSteps(inner, train, data.owner, data.parts)
        steps = groups.steps()
        seen = 1 + max((int(t.max()) for t in (data.y, data.y_val) if len(t)), default=0)
        prior = prior_loss(data.y_val, max(2, seen))[data.y]
        owner = np.asarray(data.owner)
        per_provider = []
        for p in range(data.parts):
            rows = torch.from_numpy(np.flatnonzero(owner == p))
            if len(rows) == 0:
                per_provider.append(0.0)
                continue
            part = train.subset(rows)
            per_provider.append(float(prior[rows].sum()) - part.mean_loss(steps[p]) * len(rows))
        per_example = None
        if isinstance(train, HeadTerms) and groups.factored is not None:
            held_out = per_example_loss(loo_logits(train, groups), train.y, train.loss)
            per_example = check((prior - held_out).numpy())
        return AppraisalResult(self.name, tuple(check(np.array(per_provider)).tolist()), per_example)
