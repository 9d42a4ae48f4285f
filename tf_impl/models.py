"""Builds a common/models.py spec as a Keras model and loads the canonical initial weights into it.

One builder per block type (BUILDERS): a block becomes one Keras layer named after it, whose weights are,
in order, the block's parameter_shapes() in the canonical layout (Keras's own, so nothing is converted).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from xfw.common.models import Block, Conv, Dense, Flatten, MaxPool, blocks_of, input_shape


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
}


def build_model(spec, weights: dict[str, np.ndarray]) -> keras.Model:
    return build_layers(blocks_of(spec), input_shape(spec), weights)


def build_stage(stage, weights: dict[str, np.ndarray]) -> keras.Model:
    """One model-parallel stage (common.partition.Stage) as its own Keras model."""
    return build_layers(stage.layers, stage.input_shape, weights)


def _builder(block: Block) -> Callable[..., keras.layers.Layer]:
    try:
        return BUILDERS[type(block)]
    except KeyError:
        raise TypeError(f"tf_impl.models has no builder for block type {type(block).__name__}") from None


def build_layers(spec_layers, sample_shape, weights: dict[str, np.ndarray]) -> keras.Model:
    """The blocks chained as a keras.Sequential, with the canonical weights loaded."""
    model = keras.Sequential([keras.Input(shape=sample_shape), *(_builder(block)(block) for block in spec_layers)])
    for block in spec_layers:
        if block.has_weights:
            model.get_layer(block.name).set_weights([weights[name] for name, _ in block.parameter_shapes()])
    return model


def flat_weights(variables) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in variables]).astype(np.float32)
