"""The job's model: a typed layer graph, its shapes, its family, and its PyTorch form.

A model is a sequence of layers over channels-first inputs (images arrive
as H×W×C and are permuted to C×H×W first) ending in a loss. Shapes are
inferred layer by layer, so a mismatch is reported at the layer that causes
it, before any data is touched. Batch norm is refused: it mixes examples,
which per-example clipping (and so differential privacy) cannot allow.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Shape = tuple[int, ...]


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Linear(_Layer):
    type: Literal["linear"] = "linear"
    out: int = Field(gt=0, le=65536)


class Conv2d(_Layer):
    type: Literal["conv2d"] = "conv2d"
    out: int = Field(gt=0, le=4096)
    kernel: int = Field(default=3, gt=0, le=15)
    stride: int = Field(default=1, gt=0, le=8)
    padding: int = Field(default=0, ge=0, le=8)


class Pool(_Layer):
    type: Literal["maxpool", "avgpool"]
    kernel: int = Field(default=2, gt=0, le=8)


class Activation(_Layer):
    type: Literal["relu", "gelu", "tanh"]


class Flatten(_Layer):
    type: Literal["flatten"] = "flatten"


class Dropout(_Layer):
    type: Literal["dropout"] = "dropout"
    p: float = Field(default=0.1, ge=0, lt=1)


class GroupNorm(_Layer):
    type: Literal["groupnorm"] = "groupnorm"
    groups: int = Field(gt=0, le=1024)


class LayerNorm(_Layer):
    type: Literal["layernorm"] = "layernorm"


class BatchNorm(_Layer):
    """Accepted by the parser so the verifier can refuse it with a reason."""

    type: Literal["batchnorm"] = "batchnorm"


Layer = Annotated[
    Linear | Conv2d | Pool | Activation | Flatten | Dropout | GroupNorm | LayerNorm | BatchNorm,
    Field(discriminator="type"),
]
Loss = Literal["softmax_cross_entropy", "logistic"]
FAMILIES = ("logistic_regression", "mlp", "cnn")


class ModelGraph(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: tuple[Layer, ...] = Field(min_length=1, max_length=64)
    loss: Loss = "softmax_cross_entropy"

    @property
    def family(self) -> str:
        """logistic_regression (one linear layer), cnn (any convolution), else mlp."""
        kinds = [layer.type for layer in self.layers]
        if any(k == "conv2d" for k in kinds):
            return "cnn"
        if kinds.count("linear") == 1 and all(k in ("linear", "flatten") for k in kinds):
            return "logistic_regression"
        return "mlp"


class ShapeProblem(Exception):
    def __init__(self, index: int, message: str) -> None:
        self.index = index
        super().__init__(message)


def input_shape(schema_shape: Shape, modality: str) -> Shape:
    """The model's per-example input: images channels-first (C, H, W), tables as they are."""
    if modality == "image":
        if len(schema_shape) == 2:
            return (1, *schema_shape)
        h, w, c = schema_shape
        return (c, h, w)
    return tuple(schema_shape)


def infer_shapes(graph: ModelGraph, shape: Shape) -> list[Shape]:
    """The shape after every layer; raises ShapeProblem naming the layer that cannot apply."""
    out: list[Shape] = []
    for i, layer in enumerate(graph.layers):
        if isinstance(layer, Linear):
            if len(shape) != 1:
                raise ShapeProblem(
                    i, f"linear needs a flat input, got {shape}: add a flatten layer before it"
                )
            shape = (layer.out,)
        elif isinstance(layer, Conv2d):
            if len(shape) != 3:
                raise ShapeProblem(i, f"conv2d needs a (C, H, W) input, got {shape}")
            _, h, w = shape
            h2 = (h + 2 * layer.padding - layer.kernel) // layer.stride + 1
            w2 = (w + 2 * layer.padding - layer.kernel) // layer.stride + 1
            if h2 < 1 or w2 < 1:
                raise ShapeProblem(i, f"conv2d kernel {layer.kernel} does not fit a {h}×{w} input")
            shape = (layer.out, h2, w2)
        elif isinstance(layer, Pool):
            if len(shape) != 3 or shape[1] < layer.kernel or shape[2] < layer.kernel:
                raise ShapeProblem(i, f"{layer.type} {layer.kernel} does not fit input {shape}")
            shape = (shape[0], shape[1] // layer.kernel, shape[2] // layer.kernel)
        elif isinstance(layer, Flatten):
            size = 1
            for d in shape:
                size *= d
            shape = (size,)
        elif isinstance(layer, GroupNorm) and (
            (len(shape) < 2 and layer.groups != 1) or shape[0] % layer.groups
        ):
            raise ShapeProblem(
                i, f"groupnorm with {layer.groups} groups needs channels divisible by it, got {shape}"
            )
        out.append(shape)
    return out


#: The most trainable parameters a job's model may have. DP-SGD keeps per-example quantities for
#: every sampled row, so a model far past this (a 65,536-wide linear layer has billions) would
#: exhaust the enclave's memory mid-job instead of being refused before any data is touched.
MAX_PARAMETERS = 10_000_000


def parameter_count(graph: ModelGraph, shape: Shape) -> int:
    """Trainable parameters of `graph` on per-example inputs of `shape` (shapes must infer)."""
    shapes = [shape, *infer_shapes(graph, shape)]
    total = 0
    for layer, before in zip(graph.layers, shapes, strict=False):
        if isinstance(layer, Linear):
            total += (before[0] + 1) * layer.out
        elif isinstance(layer, Conv2d):
            total += (before[0] * layer.kernel * layer.kernel + 1) * layer.out
        elif isinstance(layer, GroupNorm | LayerNorm):
            total += 2 * before[0] if isinstance(layer, GroupNorm) else 2 * _size(before)
    return total


def _size(shape: Shape) -> int:
    size = 1
    for d in shape:
        size *= d
    return size


def output_problem(graph: ModelGraph, final: Shape, classes: int) -> str | None:
    """Why the last layer cannot produce this task's output, or None."""
    want = 1 if graph.loss == "logistic" else classes
    if graph.loss == "logistic" and classes != 2:
        return f"logistic loss needs 2 classes, the data has {classes}"
    if final != (want,):
        return f"the model outputs {final}, the task needs ({want},) for {classes} classes with {graph.loss}"
    return None


def template(family: str, *, classes: int) -> ModelGraph:
    """A starting point for each model family the demo uses, with `classes` outputs."""
    if family == "logistic_regression":
        return ModelGraph(layers=(Flatten(), Linear(out=classes)))
    if family == "mlp":
        return ModelGraph(layers=(Flatten(), Linear(out=64), Activation(type="tanh"), Linear(out=classes)))
    if family == "cnn":
        return ModelGraph(
            layers=(
                Conv2d(out=16, kernel=3, padding=1),
                GroupNorm(groups=4),
                Activation(type="relu"),
                Pool(type="avgpool", kernel=2),
                Conv2d(out=32, kernel=3, padding=1),
                GroupNorm(groups=4),
                Activation(type="relu"),
                Pool(type="avgpool", kernel=2),
                Flatten(),
                Linear(out=classes),
            )
        )
    raise ValueError(f"unknown model family {family!r}; one of {', '.join(FAMILIES)}")
