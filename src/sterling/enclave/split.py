"""The job's rows: the listings pooled in job order and the held-out split, in memory or streamed.

`split` pools in-memory datasets into tensors. When any listing is a row
source read from storage (`sterling.data.rows`, a dataset larger than
memory), the split is made over row indices instead: the same permutation,
the same sides, but the features stay in their containers and are gathered
by index, per training step (`ModelRows.take`) or in batches for passes over
every row (`ModelRows.logits`), so memory grows with the batch, not the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sterling.data.dataset import Dataset
from sterling.data.rows import ArrayRows, PooledRows, RowSource
from sterling.errors import UsageError
from sterling.privacy.features import to_model_input
from sterling.privacy.graph import Shape, input_shape
from sterling.privacy.job import Job

#: Rows per batch of a pass over every row (evaluation); memory is this many rows of model input.
PASS_ROWS = 2048


class ModelRows:
    """Rows of a pooled source at `index` (ascending), as model inputs gathered on demand."""

    def __init__(self, pool: PooledRows, index: np.ndarray, in_shape: Shape) -> None:
        self.pool, self.index, self.in_shape = pool, np.asarray(index, dtype=np.int64), tuple(in_shape)
        self.y = torch.from_numpy(pool.labels[self.index])

    def __len__(self) -> int:
        return len(self.index)

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = index.cpu().numpy()
        return to_model_input(self.pool.gather(self.index[pos]), self.in_shape), self.y[index.cpu()]

    def subset(self, mask: torch.Tensor) -> ModelRows:
        """The rows where `mask` (one bool per row) is true."""
        return ModelRows(self.pool, self.index[mask.cpu().numpy()], self.in_shape)

    def logits(self, model: torch.nn.Module, *, batch: int = PASS_ROWS) -> torch.Tensor:
        """`model`'s outputs on every row, in batches (in eval mode: no dropout, nothing mixes rows)."""
        model.eval()
        outs = []
        with torch.no_grad():
            for start in range(0, len(self), batch):
                x, _ = self.take(torch.arange(start, min(start + batch, len(self))))
                outs.append(model(x))
        return torch.cat(outs) if outs else torch.empty(0)


@dataclass
class Streamed:
    """The rows of a streamed split: training rows, and the private held-out rows (None: the
    consumer's validation set evaluates)."""

    train: ModelRows
    held_out: ModelRows | None


@dataclass
class Split:
    """Training rows from every listing, and where evaluation happens.

    When `stream` is set the features are not in memory: `x_train` (and `x_eval` when the
    held-out rows evaluate) hold no rows, and every use of them goes through `stream`.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    owner: np.ndarray  # index into the job's listings, per training row
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    eval_is_private: bool
    in_shape: tuple[int, ...]
    classes: tuple[str, ...]
    stream: Streamed | None = None

    def rows_of(self, kept: Sequence[bool]) -> torch.Tensor:
        """A mask of the training rows whose provider is kept."""
        return torch.from_numpy(np.isin(self.owner, [i for i, k in enumerate(kept) if k]))


def _sides(job: Job, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) positions: a permutation seeded by the job (a public choice)."""
    train_rows = int(rows * (1 - job.evaluation.holdout_fraction))
    perm = np.random.default_rng(job.training.seed).permutation(rows)
    return np.sort(perm[:train_rows]), np.sort(perm[train_rows:])


def _check_validation(validation: Dataset, shape: tuple[int, ...], classes: tuple[str, ...]) -> None:
    if validation.schema.shape != shape or validation.schema.classes != classes:
        raise UsageError(
            f"the validation set holds {validation.schema.shape} with classes "
            f"{list(validation.schema.classes)}, unlike the listings' {shape}, {list(classes)}"
        )


def split(job: Job, datasets: Sequence[Dataset | RowSource], validation: Dataset | None = None) -> Split:
    """Pool the listings' rows and hold out `holdout_fraction` of them, exactly as the verifier counted.

    The held-out rows are a permutation of positions seeded by the job: under replace-one adjacency
    (public counts) a replaced row stays on its side of the split.
    """
    if not datasets:
        raise UsageError("a job needs at least one dataset")
    if not all(isinstance(d, Dataset) for d in datasets):
        return _streamed_split(job, datasets, validation)
    in_memory = [d for d in datasets if isinstance(d, Dataset)]
    schema = in_memory[0].schema
    in_shape = input_shape(schema.shape, schema.modality)
    features = np.concatenate([d.features for d in in_memory])
    labels = np.concatenate([d.labels for d in in_memory])
    owner = np.concatenate([np.full(d.schema.rows, i) for i, d in enumerate(in_memory)])
    train_idx, hold_idx = _sides(job, len(labels))
    if validation is not None:
        _check_validation(validation, schema.shape, schema.classes)
        x_eval, y_eval, private = validation.features, validation.labels, False
    else:
        x_eval, y_eval, private = features[hold_idx], labels[hold_idx], True
    return Split(
        x_train=to_model_input(features[train_idx], in_shape),
        y_train=torch.from_numpy(labels[train_idx]),
        owner=owner[train_idx],
        x_eval=to_model_input(x_eval, in_shape),
        y_eval=torch.from_numpy(np.asarray(y_eval)),
        eval_is_private=private,
        in_shape=in_shape,
        classes=schema.classes,
    )


def _streamed_split(job: Job, datasets: Sequence[Dataset | RowSource], validation: Dataset | None) -> Split:
    pool = PooledRows([ArrayRows(d) if isinstance(d, Dataset) else d for d in datasets])
    schema = pool.schema
    in_shape = input_shape(schema.shape, schema.modality)
    train_idx, hold_idx = _sides(job, len(pool))
    train = ModelRows(pool, train_idx, in_shape)
    empty = torch.empty((0, *in_shape))
    if validation is not None:
        _check_validation(validation, schema.shape, schema.classes)
        x_eval, y_eval, held = to_model_input(validation.features, in_shape), validation.labels, None
    else:
        held = ModelRows(pool, hold_idx, in_shape)
        x_eval, y_eval = empty, pool.labels[hold_idx]
    return Split(
        x_train=empty,
        y_train=train.y,
        owner=pool.owner[train_idx],
        x_eval=x_eval,
        y_eval=torch.from_numpy(np.asarray(y_eval)),
        eval_is_private=validation is None,
        in_shape=in_shape,
        classes=schema.classes,
        stream=Streamed(train, held),
    )
