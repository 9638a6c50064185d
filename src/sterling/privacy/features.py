"""From a dataset's features to the tensor a model takes.

Images are stored as the provider had them, H×W×C (or H×W), as uint8 or
floats; models take channels-first floats. uint8 pixels are mapped to
[-1, 1] (a fixed, public transform: centred inputs train markedly better
under DP-SGD's noise). Tabular features pass through as float32. Training, evaluation and
prediction all go through this one function, so they cannot disagree.
"""

from __future__ import annotations

import numpy as np
import torch

from sterling.errors import UsageError
from sterling.privacy.graph import Shape


def to_model_input(x: np.ndarray, in_shape: Shape) -> torch.Tensor:
    """`x` of shape (N, *row shape) as a float32 tensor of shape (N, *in_shape)."""
    arr = np.asarray(x)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if arr.dtype == np.uint8:
        t = t * (2 / 255) - 1
    n = t.shape[0]
    if len(in_shape) == 3 and t.dim() == 4:
        t = t.permute(0, 3, 1, 2)  # N, H, W, C → N, C, H, W
    elif len(in_shape) == 3 and t.dim() == 3:
        t = t.unsqueeze(1)  # N, H, W → N, 1, H, W
    if tuple(t.shape[1:]) != tuple(in_shape):
        raise UsageError(
            f"inputs of shape {tuple(arr.shape[1:])} do not fit a model taking {tuple(in_shape)}"
        )
    return t.contiguous().reshape(n, *in_shape)
