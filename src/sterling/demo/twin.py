"""The demo's yardsticks: test a received model, and train its non-private twin on the same data.

The twin is trained by the demo harness, which generated (or loaded) the data
and so holds it in the clear; no participant of the market could. It uses the
same model graph and epochs as the DP job, with Adam and no clipping or
noise, to show what privacy costs in accuracy. When the job releases its best
epoch on the consumer's validation set (`evaluation.checkpoint`), the twin is
chosen the same way, so both sides of the comparison get the same help.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sterling.data.dataset import Dataset
from sterling.enclave.checkpoints import Checkpoints
from sterling.enclave.metrics import macro_auc
from sterling.privacy import persample
from sterling.privacy.bundle import ModelBundle
from sterling.privacy.dpsgd import build_module
from sterling.privacy.features import to_model_input
from sterling.privacy.graph import input_shape
from sterling.privacy.job import Job


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    auc: float


def scores(probs: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Accuracy and macro one-vs-rest AUC (over the classes present in `labels`)."""
    return Evaluation(float((probs.argmax(axis=1) == labels).mean()), macro_auc(probs, labels))


def evaluate(bundle: ModelBundle, test: Dataset) -> Evaluation:
    return scores(bundle.predict_proba(test.features), test.labels)


def train_twin(
    job: Job,
    train: Dataset,
    test: Dataset,
    *,
    seed: int,
    batch: int = 256,
    # Adam at 10⁻³, the MedMNIST benchmarks' own recipe for their anchors.
    lr: float = 1e-3,
    validation: Dataset | None = None,
) -> tuple[Evaluation, list[dict[str, float]]]:
    """Train the job's model without privacy on `train`; its test scores and per-epoch curve."""
    torch.manual_seed(seed)
    shape = input_shape(train.schema.shape, train.schema.modality)
    model = _fast_first_convolution(build_module(job.model, shape))
    x, y = to_model_input(train.features, shape), torch.from_numpy(train.labels)
    xt = to_model_input(test.features, shape)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    epochs = max(1, round(job.training.epochs or 10))
    generator = torch.Generator().manual_seed(seed)
    picker = None
    if validation is not None and job.evaluation.checkpoint != "last":
        xv, yv = to_model_input(validation.features, shape), torch.from_numpy(validation.labels)
        picker = Checkpoints(xv, yv, job.model.loss, job.evaluation.checkpoint, every=1)
    curve = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            logits = model(x[idx])
            if job.model.loss == "logistic":
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits.squeeze(-1), y[idx].float()
                )
            else:
                loss = torch.nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += loss.item() * len(idx)
        if picker is not None:
            picker.seen(model, epoch)
        curve.append(
            {
                "epoch": epoch,
                "train_loss": total / len(x),
                "test_accuracy": scores(_probs(model, xt, job), test.labels).accuracy,
            }
        )
    if picker is not None:
        picker.restore(model, epochs)
    return scores(_probs(model, xt, job), test.labels), curve


class _ChannelsLastInput(torch.nn.Module):
    """A convolution fed channels-last input, its output back in the default layout."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h.contiguous(memory_format=torch.channels_last)).contiguous()  # type: ignore[no-any-return]


def _fast_first_convolution(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """The DP engine's own trick (`persample`), so that the twin is not the slower side: MKL runs a
    convolution of 3 input channels faster on channels-last input (the demo CNN's twin step on 256
    photographs: 63 against 84 ms, median of 15, warm); group norm after it wants the default layout.
    """
    for i, m in enumerate(model):
        if isinstance(m, torch.nn.Conv2d) and m.in_channels <= persample.FEW_CHANNELS:
            model[i] = _ChannelsLastInput(m)
    return model


def _probs(model: torch.nn.Module, x: torch.Tensor, job: Job) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = model(x)
    if job.model.loss == "logistic":
        p1 = torch.sigmoid(out[:, 0])
        return torch.stack([1 - p1, p1], 1).numpy()
    return torch.softmax(out, dim=-1).numpy()
