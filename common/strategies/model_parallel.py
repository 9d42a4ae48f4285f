"""Model parallelism: the layers split into stages on different devices."""

from __future__ import annotations

from xfw.common.strategies.base import Strategy, implementation, register

STRATEGY = Strategy(
    "model-parallel",
    "the layers split into stages on different devices; activations and gradients cross between them",
    staged=True,
    device_unit="stages",
    config_sections=("model_parallel",),
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "model-parallel",
        "placed-stages",
        "model_parallel",
        "run_placed_stages",
        "process",
        "one tf.device per stage in one process (GPUs, or logical CPU devices)",
    ),
    implementation(
        "torch",
        "model-parallel",
        "placed-stages",
        "model_parallel",
        "run_placed_stages",
        "process",
        "stages on different GPUs in one process, tensors moved with .to(device)",
        gpu_only=True,
    ),
    implementation(
        "torch",
        "model-parallel",
        "send-recv",
        "model_parallel",
        "run_send_recv",
        "torchrun",
        "one process per stage, activations and gradients exchanged with dist.send/recv",
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
