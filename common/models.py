"""Model specs as blocks, and the one registry of model kinds both frameworks build from.

A block is a sub-graph with one input and one output (today a single layer; a residual block or an
attention block fits the same mould). A model is an ordered list of blocks, and pipeline stages are cut
between blocks. Each block knows its own parameters in the canonical layout, its output shape and its
FLOPs; each model kind (an entry of MODEL_KINDS) knows how its config spec becomes blocks, its input and
output, where stages may start and what data it trains on. tf_impl/models.py and torch_impl/models.py
each register one builder per block type.

Adding a model kind: its spec class in config.py (and the ModelSpec union), a ModelKind entry below, a
builder per framework for any new block type, and tests.

Canonical parameter layout is Keras's: dense kernel (in, out), conv kernel HWIO, images NHWC, and the
flatten after the last conv block in (h, w, c) order. torch_impl converts on load (see weights.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from typing import Literal

from xfw.common.config import CNNSpec, MLPSpec, ModelSpec

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Block(ABC):
    """One input, one output. Parameter names are '<block name>/<parameter>', listed in the order the
    initial weights are drawn and the Keras builder's layer holds them."""

    name: str

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        return []

    @abstractmethod
    def output_shape(self, input_shape: Shape) -> Shape:
        """One sample's output shape, canonical layout, from its input shape."""

    def forward_flops(self, input_shape: Shape) -> int:
        """Multiply-adds counted as 2 FLOPs; activations, pooling and biases are negligible and left out."""
        return 0

    @property
    def has_weights(self) -> bool:
        return bool(self.parameter_shapes())

    @property
    def parameter_count(self) -> int:
        return sum(prod(shape) for _, shape in self.parameter_shapes())


@dataclass(frozen=True)
class Dense(Block):
    units_in: int
    units_out: int
    activation: str | None
    # Set on the first dense layer after a conv stack: the (h, w, c) shape that was flattened into it.
    flattened_from: tuple[int, int, int] | None = None

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        return [(f"{self.name}/kernel", (self.units_in, self.units_out)), (f"{self.name}/bias", (self.units_out,))]

    def output_shape(self, input_shape: Shape) -> Shape:
        return (self.units_out,)

    def forward_flops(self, input_shape: Shape) -> int:
        return 2 * self.units_in * self.units_out


@dataclass(frozen=True)
class Conv(Block):
    """Stride 1, 'same' padding, odd kernel: the output has the input's height and width."""

    channels_in: int
    channels_out: int
    kernel: int
    activation: str

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        k = self.kernel
        return [
            (f"{self.name}/kernel", (k, k, self.channels_in, self.channels_out)),
            (f"{self.name}/bias", (self.channels_out,)),
        ]

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], input_shape[1], self.channels_out)

    def forward_flops(self, input_shape: Shape) -> int:
        h, w, _ = input_shape
        return 2 * h * w * self.channels_out * self.channels_in * self.kernel**2


@dataclass(frozen=True)
class MaxPool(Block):
    """2x2, stride 2 (odd sizes round down in both frameworks)."""

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0] // 2, input_shape[1] // 2, input_shape[2])


@dataclass(frozen=True)
class Flatten(Block):
    def output_shape(self, input_shape: Shape) -> Shape:
        return (prod(input_shape),)


Layer = Block  # the name stages and callers used when every block was one layer


def weighted_stage_starts(blocks: list[Block]) -> list[int]:
    """Any block with weights but the first may start a stage, so no stage is left without weights."""
    return [i for i, block in enumerate(blocks) if i > 0 and block.has_weights]


@dataclass(frozen=True)
class ModelKind:
    """Everything the framework-free code needs to know about one `model.kind`."""

    name: str  # the config's model.kind
    spec: type
    blocks: Callable[..., list[Block]]  # spec -> blocks, in model order
    input_shape: Callable[..., Shape]  # spec -> one sample's shape, canonical (channels-last)
    output_width: Callable[..., int]  # spec -> outputs per sample (regression targets or classes)
    # How samples are laid out: flat vectors, or (h, w, c) images (digits are shaped to match; a 3-D npz
    # set gets the channel axis).
    input_layout: Literal["flat", "image"]
    input_key: str  # the config key that sets the input shape, named when a data set does not fit it
    data_kinds: tuple[str, ...]  # the data.kind values it trains on
    # blocks -> indices of the blocks an even split may start a stage at
    stage_starts: Callable[[list[Block]], list[int]] = field(default=weighted_stage_starts)


def _mlp_blocks(spec: MLPSpec) -> list[Block]:
    sizes = spec.layers
    last = len(sizes) - 2
    return [
        Dense(f"dense{i}", sizes[i], sizes[i + 1], None if i == last else spec.activation)
        for i in range(len(sizes) - 1)
    ]


def _cnn_blocks(spec: CNNSpec) -> list[Block]:
    h, w, c = spec.input_shape
    blocks: list[Block] = []
    for i, out in enumerate(spec.conv_channels):
        blocks += [Conv(f"conv{i}", c, out, spec.kernel_size, spec.activation), MaxPool(f"pool{i}")]
        h, w, c = h // 2, w // 2, out
    blocks.append(Flatten("flatten"))
    widths = [h * w * c, *spec.dense, spec.outputs]
    for i in range(len(widths) - 1):
        last = i == len(widths) - 2
        flattened_from = (h, w, c) if i == 0 else None
        blocks.append(Dense(f"dense{i}", widths[i], widths[i + 1], None if last else spec.activation, flattened_from))
    return blocks


MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind(
            "mlp",
            MLPSpec,
            _mlp_blocks,
            lambda spec: (spec.layers[0],),
            lambda spec: spec.layers[-1],
            input_layout="flat",
            input_key="model.layers[0]",
            data_kinds=("synthetic_regression", "synthetic_classification", "digits", "npz"),
        ),
        ModelKind(
            "cnn",
            CNNSpec,
            _cnn_blocks,
            lambda spec: tuple(spec.input_shape),
            lambda spec: spec.outputs,
            input_layout="image",
            input_key="model.input_shape",
            data_kinds=("digits", "npz"),
        ),
    )
}


def model_kind(spec: ModelSpec) -> ModelKind:
    return MODEL_KINDS[spec.kind]


def blocks_of(spec: ModelSpec) -> list[Block]:
    return model_kind(spec).blocks(spec)


layers_of = blocks_of  # the name callers used when every block was one layer


def input_shape(spec: ModelSpec) -> Shape:
    """Shape of one sample in the canonical (channels-last) layout."""
    return tuple(model_kind(spec).input_shape(spec))


def output_width(spec: ModelSpec) -> int:
    return model_kind(spec).output_width(spec)


def shapes_through(blocks: list[Block], shape: Shape) -> list[Shape]:
    """The shape entering each block, then the shape leaving the last: len(blocks) + 1 shapes."""
    shapes = [shape]
    for block in blocks:
        shapes.append(block.output_shape(shapes[-1]))
    return shapes


def parameter_shapes(spec: ModelSpec) -> list[tuple[str, Shape]]:
    """(name, shape) of every parameter, canonical layout, in build order."""
    return [p for block in blocks_of(spec) for p in block.parameter_shapes()]


def parameter_count(spec: ModelSpec) -> int:
    return sum(block.parameter_count for block in blocks_of(spec))


def forward_flops_per_sample(spec: ModelSpec) -> int:
    """Multiply-adds of the forward pass counted as 2 FLOPs (dense and conv only; activations, pooling
    and biases are negligible and left out)."""
    blocks = blocks_of(spec)
    shapes = shapes_through(blocks, input_shape(spec))
    return sum(block.forward_flops(shape) for block, shape in zip(blocks, shapes))


def training_flops_per_sample(spec: ModelSpec) -> int:
    """Forward + backward: the backward pass costs about twice the forward (gradients for the inputs and
    for the weights), the usual 3x rule."""
    return 3 * forward_flops_per_sample(spec)
