"""Builds a common/models.py spec as a torch nn.Sequential and loads the canonical initial weights into
it, converting Keras's layout (dense (in, out), conv HWIO, flatten in (h, w, c) order) to torch's.

One builder per block type (BUILDERS): the block's named modules (the block's own name first, then e.g. its
activation) and, for each canonical parameter, where it lives in the module and how its layout converts
both ways (common/weights.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from xfw.common.models import Block, Conv, Dense, Flatten, MaxPool, blocks_of
from xfw.common.weights import (
    conv_kernel_from_torch,
    conv_kernel_to_torch,
    dense_kernel_from_torch,
    dense_kernel_to_torch,
)

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _same(array: np.ndarray) -> np.ndarray:
    return array


@dataclass(frozen=True)
class Placement:
    """Where one canonical parameter lives in torch: a parameter path in the model (as named_parameters
    names it) and the layout conversions to and from the canonical one."""

    path: str
    to_torch: Callable[[np.ndarray], np.ndarray] = _same
    from_torch: Callable[[np.ndarray], np.ndarray] = _same


@dataclass(frozen=True)
class TorchBlock:
    modules: Callable[..., list[tuple[str, nn.Module]]]  # block -> (name, module) in forward order
    parameters: Callable[..., dict[str, Placement]]  # block -> canonical parameter name -> placement


def _with_activation(block: Dense | Conv, module: nn.Module) -> list[tuple[str, nn.Module]]:
    act = [(f"{block.name}_act", ACTIVATIONS[block.activation]())] if block.activation else []
    return [(block.name, module), *act]


def _dense_modules(block: Dense) -> list[tuple[str, nn.Module]]:
    return _with_activation(block, nn.Linear(block.units_in, block.units_out))


def _dense_parameters(block: Dense) -> dict[str, Placement]:
    # After a conv stack the kernel rows are permuted: torch flattens NCHW in (c, h, w) order.
    flat = block.flattened_from
    return {
        f"{block.name}/kernel": Placement(
            f"{block.name}.weight",
            partial(dense_kernel_to_torch, flattened_from=flat),
            partial(dense_kernel_from_torch, flattened_from=flat),
        ),
        f"{block.name}/bias": Placement(f"{block.name}.bias"),
    }


def _conv_modules(block: Conv) -> list[tuple[str, nn.Module]]:
    # stride 1 and an odd kernel: padding k//2 is Keras's 'same' exactly
    conv = nn.Conv2d(block.channels_in, block.channels_out, block.kernel, padding=block.kernel // 2)
    return _with_activation(block, conv)


def _conv_parameters(block: Conv) -> dict[str, Placement]:
    return {
        f"{block.name}/kernel": Placement(f"{block.name}.weight", conv_kernel_to_torch, conv_kernel_from_torch),
        f"{block.name}/bias": Placement(f"{block.name}.bias"),
    }


def _no_parameters(block: Block) -> dict[str, Placement]:
    return {}


BUILDERS: dict[type, TorchBlock] = {
    Dense: TorchBlock(_dense_modules, _dense_parameters),
    Conv: TorchBlock(_conv_modules, _conv_parameters),
    MaxPool: TorchBlock(lambda block: [(block.name, nn.MaxPool2d(2))], _no_parameters),
    # NCHW: flattens in (c, h, w) order; the next dense kernel's rows are permuted to match
    Flatten: TorchBlock(lambda block: [(block.name, nn.Flatten())], _no_parameters),
}


def _builder(block: Block) -> TorchBlock:
    try:
        return BUILDERS[type(block)]
    except KeyError:
        raise TypeError(f"torch_impl.models has no builder for block type {type(block).__name__}") from None


def build_model(spec, weights: dict[str, np.ndarray]) -> nn.Sequential:
    return build_layers(blocks_of(spec), weights)


class _ContiguousGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class ContiguousBoundary(nn.Module):
    """Identity that makes what crosses a stage boundary contiguous, both ways: gloo sends and receives only
    contiguous tensors, and CPU convolutions may return channels-last strides."""

    def __init__(self, side: str):
        super().__init__()
        self.side = side

    def forward(self, x):
        return _ContiguousGrad.apply(x) if self.side == "entry" else x.contiguous()


def build_stage(stage, weights: dict[str, np.ndarray]) -> nn.Sequential:
    """One model-parallel stage (common.partition.Stage) as its own module."""
    layers = build_layers(stage.layers, weights)
    return nn.Sequential(
        OrderedDict(
            [("entry", ContiguousBoundary("entry")), *layers.named_children(), ("exit", ContiguousBoundary("exit"))]
        )
    )


def build_layers(spec_layers, weights: dict[str, np.ndarray]) -> nn.Sequential:
    model = nn.Sequential(OrderedDict(entry for block in spec_layers for entry in _builder(block).modules(block)))
    with torch.no_grad():
        for block in spec_layers:
            for name, place in _builder(block).parameters(block).items():
                model.get_parameter(place.path).copy_(torch.from_numpy(place.to_torch(weights[name])))
    return model


def export_weights(module: nn.Sequential, spec_layers) -> dict[str, np.ndarray]:
    """The module's current weights in the canonical (Keras) layout: the inverse of build_layers."""
    return {
        name: place.from_torch(module.get_parameter(place.path).detach().cpu().numpy())
        for block in spec_layers
        for name, place in _builder(block).parameters(block).items()
    }


def torch_sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A canonical (h, w, c) sample shape in torch's (c, h, w); flat shapes unchanged."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


def to_torch_layout(x: np.ndarray) -> np.ndarray:
    """Canonical NHWC images -> NCHW; flat samples unchanged."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def flat_weights(parameters) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1).cpu() for p in parameters]).numpy().astype(np.float32)
