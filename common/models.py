"""Model specs defined once, as a list of layers both frameworks build from.

Canonical parameter layout is Keras's: dense kernel (in, out), conv kernel HWIO, images NHWC, and the
flatten after the last conv block in (h, w, c) order. torch_impl converts on load (see weights.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from xfw.common.config import CNNSpec, MLPSpec


@dataclass(frozen=True)
class Dense:
    name: str
    units_in: int
    units_out: int
    activation: str | None
    # Set on the first dense layer after a conv stack: the (h, w, c) shape that was flattened into it.
    flattened_from: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Conv:
    name: str
    channels_in: int
    channels_out: int
    kernel: int
    activation: str
    height: int  # input height and width ('same' padding, stride 1: the output has the same size)
    width: int


@dataclass(frozen=True)
class MaxPool:
    name: str


@dataclass(frozen=True)
class Flatten:
    name: str


Layer = Dense | Conv | MaxPool | Flatten


def layers_of(spec: MLPSpec | CNNSpec) -> list[Layer]:
    if isinstance(spec, MLPSpec):
        sizes = spec.layers
        last = len(sizes) - 2
        return [
            Dense(f"dense{i}", sizes[i], sizes[i + 1], None if i == last else spec.activation)
            for i in range(len(sizes) - 1)
        ]
    h, w, c = spec.input_shape
    layers: list[Layer] = []
    for i, out in enumerate(spec.conv_channels):
        layers.append(Conv(f"conv{i}", c, out, spec.kernel_size, spec.activation, h, w))
        layers.append(MaxPool(f"pool{i}"))
        h, w, c = h // 2, w // 2, out
    layers.append(Flatten("flatten"))
    widths = [h * w * c, *spec.dense, spec.outputs]
    for i in range(len(widths) - 1):
        last = i == len(widths) - 2
        layers.append(
            Dense(f"dense{i}", widths[i], widths[i + 1], None if last else spec.activation, (h, w, c) if i == 0 else None)
        )
    return layers


def input_shape(spec: MLPSpec | CNNSpec) -> tuple[int, ...]:
    """Shape of one sample in the canonical (channels-last) layout."""
    return (spec.layers[0],) if isinstance(spec, MLPSpec) else tuple(spec.input_shape)


def output_width(spec: MLPSpec | CNNSpec) -> int:
    return spec.layers[-1] if isinstance(spec, MLPSpec) else spec.outputs


def parameter_shapes(spec: MLPSpec | CNNSpec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter, canonical layout, in build order."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for layer in layers_of(spec):
        if isinstance(layer, Dense):
            shapes += [(f"{layer.name}/kernel", (layer.units_in, layer.units_out)), (f"{layer.name}/bias", (layer.units_out,))]
        elif isinstance(layer, Conv):
            k = layer.kernel
            shapes += [
                (f"{layer.name}/kernel", (k, k, layer.channels_in, layer.channels_out)),
                (f"{layer.name}/bias", (layer.channels_out,)),
            ]
    return shapes


def parameter_count(spec: MLPSpec | CNNSpec) -> int:
    total = 0
    for _, shape in parameter_shapes(spec):
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def forward_flops_per_sample(spec: MLPSpec | CNNSpec) -> int:
    """Multiply-adds of the forward pass counted as 2 FLOPs (dense and conv only; activations, pooling
    and biases are negligible and left out)."""
    flops = 0
    for layer in layers_of(spec):
        if isinstance(layer, Dense):
            flops += 2 * layer.units_in * layer.units_out
        elif isinstance(layer, Conv):
            flops += 2 * layer.height * layer.width * layer.channels_out * layer.channels_in * layer.kernel**2
    return flops


def training_flops_per_sample(spec: MLPSpec | CNNSpec) -> int:
    """Forward + backward: the backward pass costs about twice the forward (gradients for the inputs and
    for the weights), the usual 3x rule."""
    return 3 * forward_flops_per_sample(spec)
