"""Local SGD: replicas step on their own and average their weights every sync.every_k_steps steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from xfw.common.spec.model_specs import Section
from xfw.common.strategies.base import Parity, Strategy, implementation, register

if TYPE_CHECKING:
    from xfw.common.spec.config import Config

# Why local SGD's replicas cannot synchronise BatchNorm statistics.
LOCAL_BATCHNORM = (
    "local SGD's replicas step on their own between averagings; BatchNorm statistics over the global batch would "
    "need a collective in every forward pass, which local SGD exists to avoid"
)


class SyncSettings(Section):
    """Local SGD's setting in the config's `sync` section (common/strategies/__init__.py gathers the section)."""

    # The replicas' weights are averaged after steps 0, k, 2k, ... (PyTorch's PeriodicModelAverager's schedule, which
    # every local-sgd implementation follows) and after the last step; 1: after every step, which is synchronous
    # data parallelism (for SGD, with or without momentum: its update is linear in the gradients).
    every_k_steps: Annotated[int, Field(ge=1)] = 1


def averages_after(config: Config, step: int) -> bool:
    """Whether the replicas average their weights after `step`: after steps 0, k, 2k, ... (PyTorch's
    PeriodicModelAverager's schedule, which every implementation follows), k = sync.every_k_steps."""
    return step % config.sync.every_k_steps == 0


class LocalSGD(Strategy):
    def judged_apart(self, a: Any, b: Any, kind: Parity, config: Config) -> str | None:
        """With k > 1 another algorithm than one device's: diffed, not judged (k = 1 is held to parity)."""
        k = config.sync.every_k_steps
        if kind == Parity.CROSS_FRAMEWORK or a.strategy == b.strategy or k == 1:
            return None
        return (
            f"the replicas step on their own and average their weights every {k} steps, one device steps on the "
            "whole batch: another algorithm (sync.every_k_steps 1 is held to parity)"
        )


STRATEGY = LocalSGD(
    "local-sgd",
    "periodic model averaging (local SGD): every replica steps on its block with its own optimizer, the weights "
    "averaged every sync.every_k_steps steps; k = 1 is synchronous data parallelism",
    data_parallel=True,
    device_unit="replicas",
    config_sections=("parallel", "sync"),
    whole_model_steps=True,
    profiled=True,
)

IMPLEMENTATIONS = (
    implementation(
        "tf",
        "local-sgd",
        "local-sgd",
        "local_sgd",
        "run_local_sgd",
        "tf_config",
        "TF_CONFIG workers, each with its own model and optimizer, weights averaged every k steps with "
        "MultiWorkerMirroredStrategy's all_reduce",
        engine="tf_collective",
        no_sync_batchnorm=LOCAL_BATCHNORM,
    ),
    implementation(
        "torch",
        "local-sgd",
        "local-sgd",
        "local_sgd",
        "run_local_sgd",
        "torchrun",
        "torchrun ranks, each with its own module and optimizer, weights averaged every k steps by "
        "torch.distributed's PeriodicModelAverager",
        no_sync_batchnorm=LOCAL_BATCHNORM,
    ),
    implementation(
        "tf",
        "local-sgd",
        "local-sgd-horovod",
        "local_sgd",
        "run_local_sgd_horovod",
        "horovodrun",
        "horovodrun ranks, each with its own model and optimizer, weights averaged every k steps by "
        "hvd.grouped_allreduce",
        horovod=True,
        no_sync_batchnorm=LOCAL_BATCHNORM,
    ),
    implementation(
        "torch",
        "local-sgd",
        "local-sgd-horovod",
        "local_sgd",
        "run_local_sgd_horovod",
        "horovodrun",
        "horovodrun ranks, each with its own module and optimizer, weights averaged every k steps by "
        "hvd.grouped_allreduce",
        horovod=True,
        no_sync_batchnorm=LOCAL_BATCHNORM,
    ),
)

register(STRATEGY, IMPLEMENTATIONS)
