"""Hybrid data x model parallelism."""

from __future__ import annotations

from xfw.common.strategies.base import Strategy, implementation, register

STRATEGY = Strategy(
    "hybrid",
    "data x model parallelism: R replicas of an S-stage split, gradients averaged across each stage's replicas",
    data_parallel=True,
    staged=True,
    micro_batched=True,
    config_sections=("parallel", "model_parallel"),
    whole_model_steps=True,
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "hybrid",
        "hybrid",
        "model_parallel",
        "run_placed_stages",
        "process",
        "R replicas of tf.device-placed stages, gradients averaged across replicas, one process",
        no_sync_batchnorm="replicas are placed by hand in one graph without a replica context",
    ),
    implementation(
        "torch",
        "hybrid",
        "hybrid",
        "model_parallel",
        "run_hybrid",
        "torchrun",
        "R x S processes: a GPipe pipeline per replica, gradients all-reduced in a process group per stage",
        no_sync_batchnorm="each replica's pipeline normalises its micro-batches on its own",
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
