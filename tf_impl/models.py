"""Builds a common/models.py spec as a Keras model and loads the canonical initial weights into it."""

from __future__ import annotations

import keras
import numpy as np

from xfw.common.models import Conv, Dense, Flatten, MaxPool, input_shape, layers_of


def build_model(spec, weights: dict[str, np.ndarray]) -> keras.Model:
    return build_layers(layers_of(spec), input_shape(spec), weights)


def build_stage(stage, weights: dict[str, np.ndarray]) -> keras.Model:
    """One model-parallel stage (common.partition.Stage) as its own Keras model."""
    return build_layers(stage.layers, stage.input_shape, weights)


def build_layers(spec_layers, sample_shape, weights: dict[str, np.ndarray]) -> keras.Model:
    layers = [keras.Input(shape=sample_shape)]
    for layer in spec_layers:
        if isinstance(layer, Dense):
            layers.append(keras.layers.Dense(layer.units_out, activation=layer.activation, name=layer.name))
        elif isinstance(layer, Conv):
            layers.append(keras.layers.Conv2D(layer.channels_out, layer.kernel, padding="same", activation=layer.activation, name=layer.name))
        elif isinstance(layer, MaxPool):
            layers.append(keras.layers.MaxPooling2D(2, name=layer.name))
        elif isinstance(layer, Flatten):
            layers.append(keras.layers.Flatten(name=layer.name))  # NHWC: flattens in (h, w, c) order
    model = keras.Sequential(layers)
    for layer in spec_layers:
        if isinstance(layer, (Dense, Conv)):  # canonical layout is Keras's own: no conversion
            model.get_layer(layer.name).set_weights([weights[f"{layer.name}/kernel"], weights[f"{layer.name}/bias"]])
    return model


def flat_weights(variables) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in variables]).astype(np.float32)
