"""Builds a common/models.py spec as a torch nn.Sequential and loads the canonical initial weights into
it, converting Keras's layout (dense (in, out), conv HWIO, flatten in (h, w, c) order) to torch's."""

from __future__ import annotations

import numpy as np
import torch
from collections import OrderedDict

from torch import nn

from xfw.common.models import Conv, Dense, Flatten, MaxPool, layers_of
from xfw.common.weights import conv_kernel_from_torch, conv_kernel_to_torch, dense_kernel_from_torch, dense_kernel_to_torch

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def build_model(spec, weights: dict[str, np.ndarray]) -> nn.Sequential:
    return build_layers(layers_of(spec), weights)


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
    return nn.Sequential(OrderedDict([("entry", ContiguousBoundary("entry")), *layers.named_children(),
                                      ("exit", ContiguousBoundary("exit"))]))


def build_layers(spec_layers, weights: dict[str, np.ndarray]) -> nn.Sequential:
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for layer in spec_layers:
        if isinstance(layer, Dense):
            modules[layer.name] = nn.Linear(layer.units_in, layer.units_out)
        elif isinstance(layer, Conv):
            # stride 1 and an odd kernel: padding k//2 is Keras's 'same' exactly
            modules[layer.name] = nn.Conv2d(layer.channels_in, layer.channels_out, layer.kernel, padding=layer.kernel // 2)
        elif isinstance(layer, MaxPool):
            modules[layer.name] = nn.MaxPool2d(2)
        elif isinstance(layer, Flatten):
            modules[layer.name] = nn.Flatten()  # NCHW: flattens in (c, h, w) order; the kernel rows are permuted
        if isinstance(layer, (Dense, Conv)) and layer.activation:
            modules[f"{layer.name}_act"] = ACTIVATIONS[layer.activation]()
    model = nn.Sequential(modules)
    with torch.no_grad():
        for layer in spec_layers:
            if isinstance(layer, Dense):
                kernel = dense_kernel_to_torch(weights[f"{layer.name}/kernel"], layer.flattened_from)
            elif isinstance(layer, Conv):
                kernel = conv_kernel_to_torch(weights[f"{layer.name}/kernel"])
            else:
                continue
            module = modules[layer.name]
            module.weight.copy_(torch.from_numpy(kernel))
            module.bias.copy_(torch.from_numpy(weights[f"{layer.name}/bias"]))
    return model


def export_weights(module: nn.Sequential, spec_layers) -> dict[str, np.ndarray]:
    """The module's current weights in the canonical (Keras) layout: the inverse of build_layers."""
    weights = {}
    for layer in spec_layers:
        if not isinstance(layer, (Dense, Conv)):
            continue
        sub = getattr(module, layer.name)
        w = sub.weight.detach().cpu().numpy()
        kernel = dense_kernel_from_torch(w, layer.flattened_from) if isinstance(layer, Dense) else conv_kernel_from_torch(w)
        weights[f"{layer.name}/kernel"] = kernel
        weights[f"{layer.name}/bias"] = sub.bias.detach().cpu().numpy()
    return weights


def torch_sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A canonical (h, w, c) sample shape in torch's (c, h, w); flat shapes unchanged."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


def to_torch_layout(x: np.ndarray) -> np.ndarray:
    """Canonical NHWC images -> NCHW; flat samples unchanged."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def flat_weights(parameters) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1).cpu() for p in parameters]).numpy().astype(np.float32)
