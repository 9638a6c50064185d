"""A trained model as the consumer receives it: graph, weights, and what the enclave released.

The bundle is an uncompressed `.npz` (never a pickle, so opening one runs no
code): every parameter as an array, plus one JSON document holding the model
graph, the input shape, the class names, and the released metrics and
figures. The enclave encrypts these bytes to the consumer; `sterling job
result` decrypts them, and `ModelBundle.predict` runs the model.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sterling.data.dataset import NPZ_ERRORS
from sterling.errors import IntegrityError, UsageError
from sterling.privacy.graph import ModelGraph, Shape

FORMAT = "sterling.model-bundle/1"
_META = "__meta__"


@dataclass(frozen=True, eq=False)
class ModelBundle:
    graph: ModelGraph
    in_shape: Shape
    classes: tuple[str, ...]
    state: dict[str, np.ndarray]
    #: What the enclave released with the model: metrics, ε spent, steps, the job hash.
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        *,
        graph: ModelGraph,
        in_shape: Shape,
        classes: tuple[str, ...],
        info: dict[str, Any],
    ) -> ModelBundle:
        state = {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
        return cls(graph, tuple(in_shape), tuple(classes), state, info)

    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT,
            "graph": self.graph.model_dump(mode="json"),
            "in_shape": list(self.in_shape),
            "classes": list(self.classes),
            "info": self.info,
        }
        buf = io.BytesIO()
        arrays = {f"p:{k}": v for k, v in self.state.items()}
        arrays[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ModelBundle:
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            meta = json.loads(arrays.pop(_META).tobytes().decode())
            if meta.get("format") != FORMAT:
                raise IntegrityError(f"not a Sterling model bundle (format {meta.get('format')!r})")
            return cls(
                graph=ModelGraph.model_validate(meta["graph"]),
                in_shape=tuple(int(d) for d in meta["in_shape"]),
                classes=tuple(str(c) for c in meta["classes"]),
                state={k.removeprefix("p:"): v for k, v in arrays.items()},
                info=dict(meta.get("info") or {}),
            )
        except IntegrityError:
            raise
        except (*NPZ_ERRORS, UnicodeDecodeError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"not a Sterling model bundle ({type(exc).__name__})") from None

    @property
    def has_model(self) -> bool:
        """False for a job that completed without a model (its contract kept no provider)."""
        return bool(self.state)

    def module(self) -> torch.nn.Module:
        from sterling.privacy.dpsgd import build_module

        if not self.has_model:
            raise UsageError(f"this bundle holds no model: {self.info.get('reason', 'none was trained')}")
        model = build_module(self.graph, self.in_shape)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state.items()})
        model.eval()
        return model

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for raw features (images H×W×C as the dataset holds them)."""
        from sterling.privacy.features import to_model_input

        with torch.no_grad():
            logits = self.module()(to_model_input(x, self.in_shape))
            if self.graph.loss == "logistic":
                p1 = torch.sigmoid(logits.squeeze(-1))
                return torch.stack([1 - p1, p1], dim=1).numpy()
            return torch.softmax(logits, dim=-1).numpy()
