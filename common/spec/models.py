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
flatten after the last conv block in (h, w, c) order; attention projections as Keras's MultiHeadAttention
holds them (query/key/value kernels (E, heads, head_dim), output kernel (heads, head_dim, E)). torch_impl
converts on load (see weights.py). BatchNorm moving statistics are listed with the parameters: they are
state both frameworks must start from, though no optimizer touches them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from typing import Literal

from xfw.common.spec.model_specs import BatchNormConfig, CNNSpec, MLPSpec, ModelSpec, ResNetSpec, TransformerSpec

Shape = tuple[int, ...]

STATE_SUFFIXES = ("/moving_mean", "/moving_variance")


def is_state(name: str) -> bool:
    """A BatchNorm moving statistic: updated by the forward pass in training, never by the optimizer."""
    return name.endswith(STATE_SUFFIXES)


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

    def fans(self, name: str, shape: Shape) -> tuple[int, int]:
        """(fan_in, fan_out) of a kernel for Glorot initialisation: the last two axes, times the receptive
        field of a conv kernel. Blocks whose kernels are laid out otherwise (attention) override this."""
        receptive = prod(shape[:-2]) if len(shape) > 2 else 1
        return shape[-2] * receptive, shape[-1] * receptive

    input_dtype = "float32"  # what the block reads; token ids for an embedding

    @property
    def has_weights(self) -> bool:
        return bool(self.parameter_shapes())

    @property
    def parameter_count(self) -> int:
        """Trained parameters only (BatchNorm's moving statistics are state)."""
        return sum(prod(shape) for name, shape in self.parameter_shapes() if not is_state(name))


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
        return (*input_shape[:-1], self.units_out)  # on the last axis: per token for a sequence

    def forward_flops(self, input_shape: Shape) -> int:
        return 2 * prod(input_shape[:-1]) * self.units_in * self.units_out


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


def _batchnorm_shapes(name: str, channels: int) -> list[tuple[str, Shape]]:
    # Keras's order: gamma, beta, then the moving statistics (state, not trained)
    return [(f"{name}/{p}", (channels,)) for p in ("gamma", "beta", "moving_mean", "moving_variance")]


def _conv_flops(h: int, w: int, channels_in: int, channels_out: int, kernel: int) -> int:
    """(h, w): the OUTPUT's size."""
    return 2 * h * w * channels_out * channels_in * kernel**2


@dataclass(frozen=True)
class ConvBN(Block):
    """ResNet stem: 3x3 conv (stride 1, no bias: BatchNorm's beta is the bias), BatchNorm, relu."""

    channels_in: int
    channels_out: int
    batchnorm: BatchNormConfig
    sync_batchnorm: bool = False
    activation: str = "relu"

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        return [
            (f"{self.name}/conv/kernel", (3, 3, self.channels_in, self.channels_out)),
            *_batchnorm_shapes(f"{self.name}/bn", self.channels_out),
        ]

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], input_shape[1], self.channels_out)

    def forward_flops(self, input_shape: Shape) -> int:
        return _conv_flops(input_shape[0], input_shape[1], self.channels_in, self.channels_out, 3)


@dataclass(frozen=True)
class ResidualBlock(Block):
    """A BasicBlock: conv3x3(stride)-BN-relu-conv3x3-BN, plus the shortcut, then relu. The shortcut is the
    identity, or a 1x1 conv (stride, no bias) and BN where the shape changes (He et al.'s option B). Every
    3x3 conv pads one pixel on each side: stride 1 that is "same" in both frameworks; stride 2 it is NOT
    TensorFlow's "same" (which pads bottom/right only), so both sides pad explicitly (common/spec/semantics.py)."""

    channels_in: int
    channels_out: int
    stride: int
    batchnorm: BatchNormConfig
    sync_batchnorm: bool = False
    activation: str = "relu"

    @property
    def projection(self) -> bool:
        return self.stride != 1 or self.channels_in != self.channels_out

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        n, cin, cout = self.name, self.channels_in, self.channels_out
        shapes = [
            (f"{n}/conv1/kernel", (3, 3, cin, cout)),
            *_batchnorm_shapes(f"{n}/bn1", cout),
            (f"{n}/conv2/kernel", (3, 3, cout, cout)),
            *_batchnorm_shapes(f"{n}/bn2", cout),
        ]
        if self.projection:
            shapes += [(f"{n}/shortcut/kernel", (1, 1, cin, cout)), *_batchnorm_shapes(f"{n}/shortcut_bn", cout)]
        return shapes

    def output_shape(self, input_shape: Shape) -> Shape:
        h, w, _ = input_shape
        return (-(-h // self.stride), -(-w // self.stride), self.channels_out)

    def forward_flops(self, input_shape: Shape) -> int:
        h, w, _ = self.output_shape(input_shape)
        flops = _conv_flops(h, w, self.channels_in, self.channels_out, 3)
        flops += _conv_flops(h, w, self.channels_out, self.channels_out, 3)
        if self.projection:
            flops += _conv_flops(h, w, self.channels_in, self.channels_out, 1)
        return flops


@dataclass(frozen=True)
class GlobalAveragePool(Block):
    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[-1],)


@dataclass(frozen=True)
class Embedding(Block):
    """Token embedding plus a learned position embedding, added: (seq_len,) token ids -> (seq_len, width)."""

    vocab: int
    width: int
    seq_len: int
    input_dtype = "int64"

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        return [
            (f"{self.name}/token/embeddings", (self.vocab, self.width)),
            (f"{self.name}/position/embeddings", (self.seq_len, self.width)),
        ]

    def output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], self.width)


@dataclass(frozen=True)
class DecoderBlock(Block):
    """Pre-LayerNorm Transformer block: x + attention(ln1(x)), causal; then h + mlp(ln2(h)), the MLP
    Dense(hidden)-GELU-Dense(width). No dropout (matched runs are deterministic)."""

    width: int
    heads: int
    hidden: int
    epsilon: float
    gelu: str

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        n, e, h, d = self.name, self.width, self.heads, self.head_dim
        attention = [
            shape
            for part in ("query", "key", "value")
            for shape in ((f"{n}/attention/{part}/kernel", (e, h, d)), (f"{n}/attention/{part}/bias", (h, d)))
        ]
        return [
            (f"{n}/ln1/gamma", (e,)),
            (f"{n}/ln1/beta", (e,)),
            *attention,
            (f"{n}/attention/output/kernel", (h, d, e)),
            (f"{n}/attention/output/bias", (e,)),
            (f"{n}/ln2/gamma", (e,)),
            (f"{n}/ln2/beta", (e,)),
            (f"{n}/mlp_in/kernel", (e, self.hidden)),
            (f"{n}/mlp_in/bias", (self.hidden,)),
            (f"{n}/mlp_out/kernel", (self.hidden, e)),
            (f"{n}/mlp_out/bias", (e,)),
        ]

    def fans(self, name: str, shape: Shape) -> tuple[int, int]:
        if "/attention/" in name:  # (E, heads, head_dim) in, (heads, head_dim, E) out: E and heads x head_dim
            return (
                (shape[0], shape[1] * shape[2]) if not name.endswith("output/kernel") else (prod(shape[:2]), shape[2])
            )
        return super().fans(name, shape)

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def forward_flops(self, input_shape: Shape) -> int:
        t, e = input_shape
        projections = 4 * 2 * t * e * e  # query, key, value, output
        # scores q.k^T and the weighted sum of values, every head: the causal mask zeroes half the scores
        # after they are computed; both frameworks' kernels compute the whole t x t matrix.
        attention = 2 * (2 * t * t * e)
        mlp = 2 * 2 * t * e * self.hidden
        return projections + attention + mlp


@dataclass(frozen=True)
class LayerNorm(Block):
    width: int
    epsilon: float

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        return [(f"{self.name}/gamma", (self.width,)), (f"{self.name}/beta", (self.width,))]

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape


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
    input_layout: Literal["flat", "image", "tokens"]
    input_key: str  # the config key that sets the input shape, named when a data set does not fit it
    data_kinds: tuple[str, ...]  # the data.kind values it trains on
    # blocks -> indices of the blocks an even split may start a stage at
    stage_starts: Callable[[list[Block]], list[int]] = field(default=weighted_stage_starts)
    # Whether a named split point must be one of stage_starts (a residual or Transformer block boundary, not a
    # pooling or normalisation block between them); else any block after the first.
    split_only_at_stage_starts: bool = False


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


def _resnet_blocks(spec: ResNetSpec) -> list[Block]:
    bn, sync, act = spec.batchnorm, spec.sync_batchnorm, spec.activation
    blocks: list[Block] = [ConvBN("stem", spec.input_shape[2], spec.widths[0], bn, sync, act)]
    channels = spec.widths[0]
    for stage, width in enumerate(spec.widths):
        for i in range(spec.blocks_per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(ResidualBlock(f"stage{stage}_block{i}", channels, width, stride, bn, sync, act))
            channels = width
    return [*blocks, GlobalAveragePool("pool"), Dense("head", channels, spec.outputs, None)]


def _transformer_blocks(spec: TransformerSpec) -> list[Block]:
    hidden, eps = spec.mlp_ratio * spec.width, spec.layer_norm_epsilon
    return [
        Embedding("embed", spec.vocab, spec.width, spec.seq_len),
        *(DecoderBlock(f"block{i}", spec.width, spec.heads, hidden, eps, spec.gelu) for i in range(spec.depth)),
        LayerNorm("ln_f", spec.width, eps),
        Dense("head", spec.width, spec.vocab, None),
    ]


def block_stage_starts(blocks: list[Block]) -> list[int]:
    """Stages start at a residual or Transformer block, or at the head: never inside one."""
    return [i for i, b in enumerate(blocks) if i > 0 and isinstance(b, ResidualBlock | DecoderBlock | Dense)]


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
        ModelKind(
            "resnet",
            ResNetSpec,
            _resnet_blocks,
            lambda spec: tuple(spec.input_shape),
            lambda spec: spec.outputs,
            input_layout="image",
            input_key="model.input_shape",
            data_kinds=("synthetic_images", "digits", "npz"),
            stage_starts=block_stage_starts,
            split_only_at_stage_starts=True,
        ),
        ModelKind(
            "transformer",
            TransformerSpec,
            _transformer_blocks,
            lambda spec: (spec.seq_len,),
            lambda spec: spec.vocab,
            input_layout="tokens",
            input_key="model.seq_len",
            data_kinds=("markov_text", "npz"),
            stage_starts=block_stage_starts,
            split_only_at_stage_starts=True,
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


def has_batchnorm(spec: ModelSpec) -> bool:
    """Whether the model normalises by batch statistics: its loss then depends on which samples share a batch."""
    return any(isinstance(b, ConvBN | ResidualBlock) for b in blocks_of(spec))


def parameter_shapes(spec: ModelSpec) -> list[tuple[str, Shape]]:
    """(name, shape) of every parameter, canonical layout, in build order."""
    return [p for block in blocks_of(spec) for p in block.parameter_shapes()]


def parameter_count(spec: ModelSpec) -> int:
    return sum(block.parameter_count for block in blocks_of(spec))


def forward_flops_per_sample(spec: ModelSpec) -> int:
    """Multiply-adds of the forward pass counted as 2 FLOPs: dense, conv and attention (projections, scores
    and the weighted sum of values); activations, normalisation, pooling and biases are negligible and
    left out."""
    blocks = blocks_of(spec)
    shapes = shapes_through(blocks, input_shape(spec))
    return sum(block.forward_flops(shape) for block, shape in zip(blocks, shapes))


def training_flops_per_sample(spec: ModelSpec) -> int:
    """Forward + backward: the backward pass costs about twice the forward (gradients for the inputs and
    for the weights), the usual 3x rule."""
    return 3 * forward_flops_per_sample(spec)
