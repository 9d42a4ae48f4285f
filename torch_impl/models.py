"""Builds a common/spec/models.py spec as a torch nn.Sequential and loads the canonical initial weights into
it, converting Keras's layout (dense (in, out), conv HWIO, flatten in (h, w, c) order) to torch's.

One builder per block type (BUILDERS): the block's named modules (the block's own name first, then e.g. its
activation) and, for each canonical parameter, where it lives in the module and how its layout converts
both ways (common/spec/weights.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from xfw.common.spec.models import (
    Block,
    Conv,
    ConvBN,
    DecoderBlock,
    Dense,
    Embedding,
    Flatten,
    GlobalAveragePool,
    LayerNorm,
    MaxPool,
    ResidualBlock,
    blocks_of,
)
from xfw.common.spec.weights import (
    attention_in_bias_from_torch,
    attention_in_bias_to_torch,
    attention_in_projection_from_torch,
    attention_in_projection_to_torch,
    attention_out_kernel_from_torch,
    attention_out_kernel_to_torch,
    conv_kernel_from_torch,
    conv_kernel_to_torch,
    dense_kernel_from_torch,
    dense_kernel_to_torch,
)
from xfw.torch_impl import blocks

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _same(*arrays: np.ndarray) -> np.ndarray:
    return arrays[0]


def _one(array: np.ndarray) -> tuple[np.ndarray, ...]:
    return (array,)


@dataclass(frozen=True)
class Placement:
    """Where canonical parameters live in torch: a tensor path in the module's state_dict (a parameter, or a
    buffer such as BatchNorm's running statistics) and the layout conversions to and from the canonical one.
    Usually one canonical parameter per tensor; torch packs attention's query, key and value into one."""

    names: tuple[str, ...]  # the canonical parameters held by the tensor, in to_torch's argument order
    path: str
    to_torch: Callable[..., np.ndarray] = _same  # canonical arrays, in `names` order -> torch's tensor
    from_torch: Callable[[np.ndarray], tuple[np.ndarray, ...]] = _one  # and back, in `names` order


def _placed(name: str, path: str, to_torch=_same, from_torch=None) -> Placement:
    return Placement((name,), path, to_torch, _one if from_torch is None else (lambda a: (from_torch(a),)))


@dataclass(frozen=True)
class TorchBlock:
    modules: Callable[..., list[tuple[str, nn.Module]]]  # (block, batchnorm factory) -> (name, module), in order
    parameters: Callable[..., list[Placement]]  # block -> where each canonical parameter lives


def _with_activation(block: Dense | Conv, module: nn.Module) -> list[tuple[str, nn.Module]]:
    act = [(f"{block.name}_act", ACTIVATIONS[block.activation]())] if block.activation else []
    return [(block.name, module), *act]


def _dense_modules(block: Dense, make_batchnorm=None) -> list[tuple[str, nn.Module]]:
    return _with_activation(block, nn.Linear(block.units_in, block.units_out))


def _dense_parameters(block: Dense) -> list[Placement]:
    # After a conv stack the kernel rows are permuted: torch flattens NCHW in (c, h, w) order.
    flat = block.flattened_from
    return [
        _placed(
            f"{block.name}/kernel",
            f"{block.name}.weight",
            partial(dense_kernel_to_torch, flattened_from=flat),
            partial(dense_kernel_from_torch, flattened_from=flat),
        ),
        _placed(f"{block.name}/bias", f"{block.name}.bias"),
    ]


def _conv_modules(block: Conv, make_batchnorm=None) -> list[tuple[str, nn.Module]]:
    # stride 1 and an odd kernel: padding k//2 is Keras's 'same' exactly
    conv = nn.Conv2d(block.channels_in, block.channels_out, block.kernel, padding=block.kernel // 2)
    return _with_activation(block, conv)


def _conv_parameters(block: Conv) -> list[Placement]:
    return [
        _placed(f"{block.name}/kernel", f"{block.name}.weight", conv_kernel_to_torch, conv_kernel_from_torch),
        _placed(f"{block.name}/bias", f"{block.name}.bias"),
    ]


def _no_parameters(block: Block) -> list[Placement]:
    return []


def _batchnorm_parameters(prefix: str, path: str) -> list[Placement]:
    torch_names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    return [_placed(f"{prefix}/{ours}", f"{path}.{theirs}") for ours, theirs in torch_names.items()]


def _conv_kernel(name: str, path: str) -> Placement:
    return _placed(name, path, conv_kernel_to_torch, conv_kernel_from_torch)


def _conv_bn_parameters(block: ConvBN) -> list[Placement]:
    n = block.name
    return [_conv_kernel(f"{n}/conv/kernel", f"{n}.conv.weight"), *_batchnorm_parameters(f"{n}/bn", f"{n}.bn")]


def _residual_parameters(block: ResidualBlock) -> list[Placement]:
    n = block.name
    placements = [
        _conv_kernel(f"{n}/conv1/kernel", f"{n}.conv1.weight"),
        *_batchnorm_parameters(f"{n}/bn1", f"{n}.bn1"),
        _conv_kernel(f"{n}/conv2/kernel", f"{n}.conv2.weight"),
        *_batchnorm_parameters(f"{n}/bn2", f"{n}.bn2"),
    ]
    if block.projection:
        placements += [
            _conv_kernel(f"{n}/shortcut/kernel", f"{n}.shortcut.weight"),
            *_batchnorm_parameters(f"{n}/shortcut_bn", f"{n}.shortcut_bn"),
        ]
    return placements


def _embedding_parameters(block: Embedding) -> list[Placement]:
    n = block.name
    return [
        _placed(f"{n}/token/embeddings", f"{n}.token.weight"),
        _placed(f"{n}/position/embeddings", f"{n}.position.weight"),
    ]


def _layer_norm_parameters(prefix: str, path: str) -> list[Placement]:
    return [_placed(f"{prefix}/gamma", f"{path}.weight"), _placed(f"{prefix}/beta", f"{path}.bias")]


def _decoder_parameters(block: DecoderBlock) -> list[Placement]:
    n, heads = block.name, block.heads
    qkv = ("query", "key", "value")
    return [
        *_layer_norm_parameters(f"{n}/ln1", f"{n}.ln1"),
        # torch packs q, k, v into one (3E, E) projection; Keras keeps three (E, heads, head_dim) kernels
        Placement(
            tuple(f"{n}/attention/{p}/kernel" for p in qkv),
            f"{n}.attention.in_proj_weight",
            attention_in_projection_to_torch,
            partial(attention_in_projection_from_torch, heads=heads),
        ),
        Placement(
            tuple(f"{n}/attention/{p}/bias" for p in qkv),
            f"{n}.attention.in_proj_bias",
            attention_in_bias_to_torch,
            partial(attention_in_bias_from_torch, heads=heads),
        ),
        _placed(
            f"{n}/attention/output/kernel",
            f"{n}.attention.out_proj.weight",
            attention_out_kernel_to_torch,
            partial(attention_out_kernel_from_torch, heads=heads),
        ),
        _placed(f"{n}/attention/output/bias", f"{n}.attention.out_proj.bias"),
        *_layer_norm_parameters(f"{n}/ln2", f"{n}.ln2"),
        _placed(f"{n}/mlp_in/kernel", f"{n}.mlp_in.weight", dense_kernel_to_torch, dense_kernel_from_torch),
        _placed(f"{n}/mlp_in/bias", f"{n}.mlp_in.bias"),
        _placed(f"{n}/mlp_out/kernel", f"{n}.mlp_out.weight", dense_kernel_to_torch, dense_kernel_from_torch),
        _placed(f"{n}/mlp_out/bias", f"{n}.mlp_out.bias"),
    ]


def _global_average_pool(block, make_batchnorm=None) -> list[tuple[str, nn.Module]]:
    return [(block.name, nn.AdaptiveAvgPool2d(1)), (f"{block.name}_flatten", nn.Flatten())]


BUILDERS: dict[type, TorchBlock] = {
    Dense: TorchBlock(_dense_modules, _dense_parameters),
    Conv: TorchBlock(_conv_modules, _conv_parameters),
    MaxPool: TorchBlock(lambda block, make_batchnorm=None: [(block.name, nn.MaxPool2d(2))], _no_parameters),
    # NCHW: flattens in (c, h, w) order; the next dense kernel's rows are permuted to match
    Flatten: TorchBlock(lambda block, make_batchnorm=None: [(block.name, nn.Flatten())], _no_parameters),
    ConvBN: TorchBlock(
        lambda block, make_batchnorm: [(block.name, blocks.ConvBN(block, make_batchnorm))], _conv_bn_parameters
    ),
    ResidualBlock: TorchBlock(
        lambda block, make_batchnorm: [(block.name, blocks.ResidualBlock(block, make_batchnorm))],
        _residual_parameters,
    ),
    GlobalAveragePool: TorchBlock(_global_average_pool, _no_parameters),
    Embedding: TorchBlock(
        lambda block, make_batchnorm=None: [(block.name, blocks.Embedding(block))], _embedding_parameters
    ),
    DecoderBlock: TorchBlock(
        lambda block, make_batchnorm=None: [(block.name, blocks.DecoderBlock(block))], _decoder_parameters
    ),
    LayerNorm: TorchBlock(
        lambda block, make_batchnorm=None: [(block.name, nn.LayerNorm(block.width, eps=block.epsilon))],
        lambda block: _layer_norm_parameters(block.name, block.name),
    ),
}


def _builder(block: Block) -> TorchBlock:
    try:
        return BUILDERS[type(block)]
    except KeyError:
        raise TypeError(f"torch_impl.models has no builder for block type {type(block).__name__}") from None


def build_model(spec, weights: dict[str, np.ndarray], make_batchnorm=blocks.batchnorm) -> nn.Sequential:
    return build_layers(blocks_of(spec), weights, make_batchnorm)


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


def build_stage(stage, weights: dict[str, np.ndarray], make_batchnorm=blocks.batchnorm) -> nn.Sequential:
    """One model-parallel stage (common.partition.Stage) as its own module."""
    layers = build_layers(stage.layers, weights, make_batchnorm)
    return nn.Sequential(
        OrderedDict(
            [("entry", ContiguousBoundary("entry")), *layers.named_children(), ("exit", ContiguousBoundary("exit"))]
        )
    )


def build_layers(spec_layers, weights: dict[str, np.ndarray], make_batchnorm=blocks.batchnorm) -> nn.Sequential:
    modules = [entry for block in spec_layers for entry in _builder(block).modules(block, make_batchnorm)]
    model = nn.Sequential(OrderedDict(modules))
    state = model.state_dict(keep_vars=True)  # parameters and buffers, by path
    with torch.no_grad():
        for block in spec_layers:
            for place in _builder(block).parameters(block):
                value = place.to_torch(*(weights[name] for name in place.names))
                state[place.path].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return model


def export_weights(module: nn.Sequential, spec_layers) -> dict[str, np.ndarray]:
    """The module's current weights (and BatchNorm statistics) in the canonical (Keras) layout: the inverse
    of build_layers."""
    return canonical_tensors(module, spec_layers, module.state_dict())


def canonical_tensors(module: nn.Sequential, spec_layers, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Tensors shaped as the module's parameters (the parameters themselves, their gradients, an optimizer's state
    for them), by parameter path, in the canonical (Keras) names and layout; paths not in `tensors` are left out."""
    out = {}
    for block in spec_layers:
        for place in _builder(block).parameters(block):
            if place.path in tensors:
                # a copy: on a CPU .numpy() shares the tensor's memory, which the next update overwrites
                array = tensors[place.path].detach().cpu().numpy().copy()
                out.update(zip(place.names, place.from_torch(array)))
    return out


def torch_sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A canonical (h, w, c) sample shape in torch's (c, h, w); flat shapes unchanged."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


def to_torch_layout(x: np.ndarray) -> np.ndarray:
    """Canonical NHWC images -> NCHW; flat samples unchanged."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def flat_weights(parameters) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1).cpu() for p in parameters]).numpy().astype(np.float32)
