"""Builds a common/spec/models.py spec as a Keras model and loads the canonical initial weights into it.

One builder per block type (BUILDERS): a block becomes one Keras layer named after it. A single-layer
block's weights are, in order, its parameter_shapes() in the canonical layout (Keras's own, so nothing is
converted); a multi-layer block (tf_impl/blocks.py) names its variables itself (canonical_variables).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

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
    input_shape,
)
from xfw.tf_impl import blocks


def _dense(block: Dense) -> keras.layers.Layer:
    return keras.layers.Dense(block.units_out, activation=block.activation, name=block.name)


def _conv(block: Conv) -> keras.layers.Layer:
    return keras.layers.Conv2D(
        block.channels_out, block.kernel, padding="same", activation=block.activation, name=block.name
    )


def _max_pool(block: MaxPool) -> keras.layers.Layer:
    return keras.layers.MaxPooling2D(2, name=block.name)


def _flatten(block: Flatten) -> keras.layers.Layer:
    return keras.layers.Flatten(name=block.name)  # NHWC: flattens in (h, w, c) order


BUILDERS: dict[type, Callable[..., keras.layers.Layer]] = {
    Dense: _dense,
    Conv: _conv,
    MaxPool: _max_pool,
    Flatten: _flatten,
    ConvBN: blocks.ConvBN,
    ResidualBlock: blocks.ResidualBlock,
    GlobalAveragePool: lambda block: keras.layers.GlobalAveragePooling2D(name=block.name),
    Embedding: blocks.Embedding,
    DecoderBlock: blocks.DecoderBlock,
    LayerNorm: lambda block: keras.layers.LayerNormalization(epsilon=block.epsilon, name=block.name),
}
# Blocks holding BatchNormalization layers: their builder takes the factory that makes them.
_WITH_BATCHNORM = (ConvBN, ResidualBlock)


def build_model(spec, weights: dict[str, np.ndarray], make_batchnorm=blocks.batchnorm) -> keras.Model:
    return build_layers(blocks_of(spec), input_shape(spec), weights, make_batchnorm)


def build_stage(stage, weights: dict[str, np.ndarray], make_batchnorm=blocks.batchnorm) -> keras.Model:
    """One model-parallel stage (common.partition.Stage) as its own Keras model."""
    return build_layers(stage.layers, stage.input_shape, weights, make_batchnorm)


def _builder(block: Block) -> Callable[..., keras.layers.Layer]:
    try:
        return BUILDERS[type(block)]
    except KeyError:
        raise TypeError(f"tf_impl.models has no builder for block type {type(block).__name__}") from None


def _layer(block: Block, make_batchnorm) -> keras.layers.Layer:
    if isinstance(block, _WITH_BATCHNORM):
        return _builder(block)(block, make_batchnorm)
    return _builder(block)(block)


def build_layers(spec_layers, sample_shape, weights: dict[str, np.ndarray], make_batchnorm=blocks.batchnorm):
    """The blocks chained as a keras.Sequential, with the canonical weights loaded."""
    inputs = keras.Input(shape=sample_shape, dtype=spec_layers[0].input_dtype)
    model = keras.Sequential([inputs, *(_layer(block, make_batchnorm) for block in spec_layers)])
    for block in spec_layers:
        if not block.has_weights:
            continue
        layer = model.get_layer(block.name)
        if hasattr(layer, "canonical_variables"):
            for name, variable in layer.canonical_variables().items():
                variable.assign(weights[name])
        else:
            layer.set_weights([weights[name] for name, _ in block.parameter_shapes()])
    return model


def flat_weights(variables) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in variables]).astype(np.float32)
