"""Pipelining: model-parallel stages fed with micro-batches (GPipe, 1F1B)."""

from __future__ import annotations

from xfw.common.strategies.base import Strategy, implementation, register

STRATEGY = Strategy(
    "pipeline",
    "model-parallel stages fed with micro-batches, so stages work at the same time (GPipe, 1F1B)",
    staged=True,
    micro_batched=True,
    device_unit="stages",
    config_sections=("model_parallel",),
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "pipeline",
        "gpipe",
        "model_parallel",
        "run_placed_stages",
        "process",
        "micro-batches through tf.device-placed stages, all forwards then all backwards, one process",
    ),
    implementation(
        "torch",
        "pipeline",
        "gpipe",
        "model_parallel",
        "run_gpipe",
        "torchrun",
        "torch.distributed.pipelining ScheduleGPipe, one process per stage",
    ),
    implementation(
        "torch",
        "pipeline",
        "1f1b",
        "model_parallel",
        "run_1f1b",
        "torchrun",
        "torch.distributed.pipelining Schedule1F1B, one process per stage",
        micro_batches_at_least_stages=True,
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
