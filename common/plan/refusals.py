"""Why a run cannot go here: one "why not" pipeline (`unavailable_reason`) over the implementation, the config and
the machine's resources (common/plan/machine.py), each reason in words a user can act on."""

from __future__ import annotations

import os
import shutil

from xfw.common.errors import UserError
from xfw.common.plan.machine import Machine, ranks_share_a_gpu
from xfw.common.plan.registry import run_devices, run_processes
from xfw.common.strategies.base import FRAMEWORK_NAMES, DeviceUse, Framework, Implementation, Launcher


def unavailable_reason(impl: Implementation, machine: Machine, devices: int = 2, config=None) -> str | None:
    """None when `impl` can run here (with `devices` devices for its run, and `config` where given);
    otherwise why not, in words a user can act on."""
    mp = config.model_parallel if config is not None else None
    if impl.micro_batches_at_least_stages and mp is not None and mp.micro_batches < mp.stages:
        return f"needs model_parallel.micro_batches >= stages (it is {mp.micro_batches} < {mp.stages})"
    if impl.framework not in machine.frameworks:
        return f"{FRAMEWORK_NAMES[impl.framework]} is not installed (run `make setup`)"
    if config is not None:
        reason = model_unsupported(impl, config)
        if reason:
            return reason
    bug = impl.library_bug(config) if impl.library_bug is not None else None
    if bug:
        return bug
    if impl.horovod and impl.framework not in machine.horovod_frameworks:
        return f"Horovod is not installed with {FRAMEWORK_NAMES[impl.framework]} support (run `make setup`)"
    if impl.gpu_only and impl.devices == DeviceUse.ONE and machine.gpus < 1:
        return "needs a GPU, this machine has none"
    if impl.gpu_only and impl.devices != DeviceUse.ONE and machine.gpus < max(devices, 2):
        return f"needs {max(devices, 2)} GPUs, this machine has {machine.gpus}"
    if config is not None:
        return engine_refusal(impl, machine, config) or shared_gpu_refusal(impl, machine, config)
    return None


def engine_refusal(impl: Implementation, machine: Machine, config) -> str | None:
    """Why `impl`'s engine cannot take the options config gives it on this machine; None when it can."""
    if impl.engine != "tf_collective" or config.parallel.engine.tf_collective.implementation != "nccl":
        return None
    if not machine.gpus:
        return "parallel.engine.tf_collective.implementation nccl needs a GPU per worker; this machine has none"
    if ranks_share_a_gpu(run_processes(impl, config), machine.gpus, run_devices(impl, config)):
        return (
            "parallel.engine.tf_collective.implementation nccl: its workers would share a GPU, and NCCL refuses two "
            "ranks on one device (ring works)"
        )
    return None


def shared_gpu_refusal(impl: Implementation, machine: Machine, config) -> str | None:
    """Why `impl` cannot run where its processes would share a GPU (several networks on one GPU, more replicas
    than GPUs); None where they would not, or where it can. Shared-GPU torch groups run on gloo (see
    torch_impl.training.init_process_group), which takes CUDA tensors in all_reduce and broadcast only."""
    if not machine.gpus or impl.launcher == Launcher.PROCESS:
        return None
    if not ranks_share_a_gpu(run_processes(impl, config), machine.gpus, run_devices(impl, config)):
        return None
    if impl.horovod:
        return "its processes would share a GPU, and Horovod's GPU collectives are NCCL's, which needs one GPU per rank"
    if impl.framework == Framework.TORCH and (impl.kind.staged or impl.kind.exchanges):
        return (
            "its processes would share a GPU: NCCL needs one GPU per rank, and gloo cannot send or all-gather "
            "CUDA tensors (only all-reduce and broadcast them)"
        )
    return None


def _cxx_compiler() -> str | None:
    """The C++ compiler torch's inductor would build its kernels with (CXX, else g++), where it exists."""
    return shutil.which(os.environ.get("CXX") or "g++")


def model_unsupported(impl: Implementation, config) -> str | None:
    """Why `impl` cannot train config's model as configured; None when it can."""
    spec = config.model
    sync = getattr(spec, "sync_batchnorm", False) and impl.kind.data_parallel and config.parallel.replicas > 1
    if sync and impl.no_sync_batchnorm:
        return f"cannot synchronise BatchNorm (model.sync_batchnorm): {impl.no_sync_batchnorm}"
    if config.training.accumulation_steps > 1 and (impl.kind.staged or impl.kind.several_networks):
        return (
            "training.accumulation_steps applies to single-device and data-parallel runs (pipelines cut the batch "
            "into model_parallel.micro_batches already)"
        )
    if config.training.accumulation_steps > 1 and impl.keras_fit:
        return (
            "training.accumulation_steps: Keras fit's train step takes one batch per optimizer update (the "
            "optimizer's gradient_accumulation_steps counts whole steps, not micro-batches of one)"
        )
    mixed = config.runtime.precision != "float32"
    whole_model_steps = impl.kind.whole_model_steps
    if mixed and not whole_model_steps:
        return (
            f"runtime.precision {config.runtime.precision} applies to single-device and data-parallel runs "
            "(model-parallel and several-network runs train in float32)"
        )
    if config.data.pipeline == "native" and not whole_model_steps:
        return "data.pipeline native applies to single-device and data-parallel runs"
    if config.runtime.compile and not whole_model_steps:
        return "runtime.compile applies to single-device and data-parallel runs"
    if config.runtime.compile and impl.no_compile:
        return f"cannot compile (runtime.compile): {impl.no_compile}"
    if config.runtime.compile and impl.framework == Framework.TORCH and not _cxx_compiler():
        return (
            "torch.compile (inductor) needs a C++ compiler and finds none "
            f"({os.environ.get('CXX') or 'g++'} is not on PATH; set CXX)"
        )
    if mixed and impl.no_mixed_precision:
        return f"cannot train in {config.runtime.precision}: {impl.no_mixed_precision}"
    reason = impl.kind.refusal(config, impl)
    if reason:
        return reason
    clipping = config.training.clip_global_norm is not None
    if clipping and impl.no_global_clipping and config.parallel.replicas > 1:
        return f"cannot clip by the global norm (training.clip_global_norm): {impl.no_global_clipping}"
    if clipping and impl.kind.staged and impl.launcher != Launcher.PROCESS:
        return (
            "cannot clip by the global norm (training.clip_global_norm): each stage's process updates its own "
            "parameters and would clip them by their own norm"
        )
    return None


def oversubscription(impl: Implementation, machine: Machine, config) -> str | None:
    """Why a run of `impl` under `config` would ask for more than this machine has (GPUs; or CPU cores, a CPU
    device being parallel.threads_per_replica cores), in words; None when it fits."""
    devices = run_devices(impl, config)
    unit = impl.kind.device_unit
    if machine.gpus:
        return f"{devices} {unit} but this machine has {machine.gpus} GPUs" if devices > machine.gpus else None
    threads = config.parallel.threads_per_replica
    if devices * threads <= machine.cpu_cores:
        return None
    if threads == 1:
        return f"{devices} {unit} but this machine has {machine.cpu_cores} CPU cores"
    return (
        f"{devices} {unit} x {threads} threads each (parallel.threads_per_replica) need {devices * threads} CPU "
        f"cores but this machine has {machine.cpu_cores}"
    )


def check_devices(impl: Implementation, machine: Machine, config) -> None:
    """Refuse a run that oversubscribes the machine, unless the config says to: its timings would measure
    contention for cores, not the strategy."""
    reason = oversubscription(impl, machine, config)
    if reason and not config.parallel.oversubscribe:
        raise UserError(f"{reason} (set parallel.oversubscribe: true to run anyway; timings are then meaningless)")
