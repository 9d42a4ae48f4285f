"""One device, no parallelism: the reference every parallel run is diffed against."""

from __future__ import annotations

from xfw.common.strategies.base import Strategy, implementation, register

STRATEGY = Strategy(
    "single",
    "one device, no parallelism: the reference every parallel run is diffed against",
    reference_strategy=None,
    device_unit="device",
    whole_model_steps=True,
    profiled=True,
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "single",
        "single",
        "single",
        "run_single",
        "process",
        "Keras model, custom tf.function loop, one device",
        traced=True,
    ),
    implementation(
        "tf",
        "single",
        "fit",
        "keras_fit",
        "run_fit",
        "process",
        "Keras model.compile + model.fit, one device, fed by tf.data (no torch twin: diffed with the custom loop)",
        keras_fit=True,
    ),
    implementation(
        "torch", "single", "single", "single", "run_single", "process", "nn.Module, plain loop, one device", traced=True
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
