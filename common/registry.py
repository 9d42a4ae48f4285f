"""The one registry: (framework, strategy, implementation) -> the function that trains and the launcher
that starts it. `xfw list`, `xfw run` and `xfw compare` read only this table."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from xfw.common.errors import UserError

FRAMEWORKS = ("tf", "torch")
FRAMEWORK_NAMES = {"tf": "TensorFlow", "torch": "PyTorch"}

# Strategy families and what each means; every family has entries on both sides (tests/test_registry.py).
STRATEGIES = {
    "single": "one device, no parallelism: the reference every parallel run is diffed against",
    "mirrored": "synchronous data parallelism: every replica holds the whole model, gradients are averaged each step",
    "model-parallel": "the layers split into stages on different devices; activations and gradients cross between them",
    "pipeline": "model-parallel stages fed with micro-batches, so stages work at the same time (GPipe, 1F1B)",
    "hybrid": "data x model parallelism: R replicas of an S-stage split, gradients averaged across each stage's replicas",
    "independent": "K separate networks (config `networks`) trained at the same time, each on its own device or process, "
                   "against the same K one after another; ensemble evaluation at the end",
    "collaborative": "networks on different devices that exchange intermediate results every step: mutual learning "
                     "(predictions) and an encoder -> head chain (activations and their gradients)",
    "shared-device": "two (or more) networks on ONE device: one after another, in threads, in processes "
                     "(CUDA streams on a GPU); does concurrency help or hurt, over a sweep of model sizes",
}

# How many devices (and, for multi-process launchers, processes) a strategy's run occupies.
DATA_PARALLEL = ("mirrored", "hybrid")
STAGED = ("model-parallel", "pipeline", "hybrid")
# Strategies that train several networks; their results list one loss curve per network.
MULTI_NETWORK = ("independent", "collaborative", "shared-device")


@dataclass(frozen=True)
class Implementation:
    framework: str
    strategy: str
    name: str
    module: str  # imported lazily, in the worker process only
    function: str
    launcher: str
    description: str
    gpu_only: bool = False  # needs one GPU per device of the run
    horovod: bool = False
    micro_batches_at_least_stages: bool = False  # a schedule that fills the pipeline before it drains
    # Multi-network strategies: "one" device for every network, or one device "each" (per network, or per
    # part of a chain); "strategy": the data/model-parallel rule (replicas x stages).
    devices: str = "strategy"
    chain: bool = False  # an encoder -> head chain: two parts, whatever config.networks holds
    reference: str = "single"  # the same framework's implementation this one is diffed against
    twin: str | None = None  # the other framework's implementation to diff against (default: same name)

    @property
    def id(self) -> str:
        return f"{self.framework}-{self.name}"


def _impl(framework, strategy, name, module, function, launcher, description, **kw) -> Implementation:
    return Implementation(framework, strategy, name, f"xfw.{framework}_impl.{module}", function, launcher, description, **kw)


REGISTRY: tuple[Implementation, ...] = (
    _impl("tf", "single", "single", "single", "run_single", "process", "Keras model, custom tf.function loop, one device"),
    _impl("tf", "mirrored", "mirrored-strategy", "mirrored", "run_mirrored_strategy", "process",
          "tf.distribute.MirroredStrategy, one process, N devices (GPUs, or logical CPU devices)"),
    _impl("tf", "mirrored", "multi-worker", "mirrored", "run_multi_worker", "tf_config",
          "tf.distribute.MultiWorkerMirroredStrategy, N processes with TF_CONFIG"),
    _impl("tf", "mirrored", "manual-placement", "mirrored", "run_manual_placement", "process",
          "one tf.device per replica, gradients averaged explicitly, one process"),
    _impl("tf", "mirrored", "horovod", "horovod", "run_horovod", "horovodrun",
          "horovod.tensorflow, grouped_allreduce of gradients, launched by horovodrun", horovod=True),
    _impl("torch", "single", "single", "single", "run_single", "process", "nn.Module, plain loop, one device"),
    _impl("torch", "mirrored", "ddp", "mirrored", "run_ddp", "torchrun",
          "DistributedDataParallel launched by torchrun (gloo on CPU, nccl on GPU)"),
    _impl("torch", "mirrored", "allreduce", "mirrored", "run_allreduce", "torchrun",
          "explicit torch.distributed.all_reduce of every gradient, launched by torchrun"),
    _impl("torch", "mirrored", "data-parallel", "mirrored", "run_data_parallel", "process",
          "nn.DataParallel, one process scattering each batch over the GPUs", gpu_only=True),
    _impl("torch", "mirrored", "horovod", "horovod", "run_horovod", "horovodrun",
          "horovod.torch DistributedOptimizer, launched by horovodrun", horovod=True),
    _impl("tf", "model-parallel", "placed-stages", "model_parallel", "run_placed_stages", "process",
          "one tf.device per stage in one process (GPUs, or logical CPU devices)"),
    _impl("torch", "model-parallel", "placed-stages", "model_parallel", "run_placed_stages", "process",
          "stages on different GPUs in one process, tensors moved with .to(device)", gpu_only=True),
    _impl("torch", "model-parallel", "send-recv", "model_parallel", "run_send_recv", "torchrun",
          "one process per stage, activations and gradients exchanged with dist.send/recv"),
    _impl("tf", "pipeline", "gpipe", "model_parallel", "run_placed_stages", "process",
          "micro-batches through tf.device-placed stages, all forwards then all backwards, one process"),
    _impl("torch", "pipeline", "gpipe", "model_parallel", "run_gpipe", "torchrun",
          "torch.distributed.pipelining ScheduleGPipe, one process per stage"),
    _impl("torch", "pipeline", "1f1b", "model_parallel", "run_1f1b", "torchrun",
          "torch.distributed.pipelining Schedule1F1B, one process per stage", micro_batches_at_least_stages=True),
    _impl("tf", "hybrid", "hybrid", "model_parallel", "run_placed_stages", "process",
          "R replicas of tf.device-placed stages, gradients averaged across replicas, one process"),
    _impl("torch", "hybrid", "hybrid", "model_parallel", "run_hybrid", "torchrun",
          "R x S processes: a GPipe pipeline per replica, gradients all-reduced in a process group per stage"),
    # ---- several networks: independent ------------------------------------------------------------
    _impl("tf", "independent", "sequential", "networks", "run_sequential", "process",
          "the K networks one after another in one process, on one device: each network's solo run",
          devices="one", reference="sequential"),
    _impl("tf", "independent", "placed", "networks", "run_placed_networks", "process",
          "one tf.function steps all K networks, each under its own tf.device; the executor runs them at once",
          devices="each", reference="sequential", twin="processes"),
    _impl("tf", "independent", "processes", "networks", "run_processes", "tf_config",
          "one process per network (TF_CONFIG), MultiWorkerMirroredStrategy collectives for the start barrier and "
          "the ensemble all-gather", devices="each", reference="sequential"),
    _impl("torch", "independent", "sequential", "networks", "run_sequential", "process",
          "the K networks one after another in one process, on one device: each network's solo run",
          devices="one", reference="sequential"),
    _impl("torch", "independent", "processes", "networks", "run_processes", "torchrun",
          "one process per network (torchrun), gloo/nccl for the start barrier and the ensemble all_gather",
          devices="each", reference="sequential"),
    # ---- several networks: collaborative -----------------------------------------------------------
    _impl("tf", "collaborative", "mutual", "collaborative", "run_mutual", "process",
          "mutual learning, all networks on one device: the reference", devices="one", reference="mutual"),
    _impl("tf", "collaborative", "mutual-placed", "collaborative", "run_mutual", "process",
          "mutual learning, each network under its own tf.device, predictions cross devices every step",
          devices="each", reference="mutual", twin="mutual-distributed"),
    _impl("tf", "collaborative", "chain", "collaborative", "run_chain", "process",
          "encoder -> head, both networks on one device: the reference", devices="one", chain=True, reference="chain"),
    _impl("tf", "collaborative", "chain-placed", "collaborative", "run_chain", "process",
          "encoder and head under their own tf.device: activations forward, gradients back every step",
          devices="each", chain=True, reference="chain", twin="chain-send-recv"),
    _impl("torch", "collaborative", "mutual", "collaborative", "run_mutual", "process",
          "mutual learning, all networks on one device: the reference", devices="one", reference="mutual"),
    _impl("torch", "collaborative", "mutual-distributed", "collaborative", "run_mutual_distributed", "torchrun",
          "mutual learning, one process per network, predictions exchanged with dist.all_gather every step",
          devices="each", reference="mutual"),
    _impl("torch", "collaborative", "chain", "collaborative", "run_chain", "process",
          "encoder -> head, both networks on one device: the reference", devices="one", chain=True, reference="chain"),
    _impl("torch", "collaborative", "chain-send-recv", "collaborative", "run_chain_send_recv", "torchrun",
          "encoder and head in two processes: activations forward, gradients back with dist.send/recv",
          devices="each", chain=True, reference="chain"),
    # ---- several networks: sharing one device ------------------------------------------------------
    _impl("tf", "shared-device", "shared-sequential", "networks", "run_sequential", "process",
          "the networks one after another on the device: each alone", devices="one", reference="shared-sequential"),
    _impl("tf", "shared-device", "shared-threads", "networks", "run_threads", "process",
          "one Python thread per network in one process, both on the device at once", devices="one", reference="shared-sequential"),
    _impl("tf", "shared-device", "shared-processes", "networks", "run_processes", "tf_config",
          "one process per network (TF_CONFIG), all on the same device", devices="one", reference="shared-sequential"),
    _impl("torch", "shared-device", "shared-sequential", "networks", "run_sequential", "process",
          "the networks one after another on the device: each alone", devices="one", reference="shared-sequential"),
    _impl("torch", "shared-device", "shared-threads", "networks", "run_threads", "process",
          "one Python thread per network in one process, both on the device at once", devices="one", reference="shared-sequential"),
    _impl("torch", "shared-device", "shared-processes", "networks", "run_processes", "torchrun",
          "one process per network (torchrun), all on the same device", devices="one", reference="shared-sequential"),
    _impl("torch", "shared-device", "shared-cuda-streams", "networks", "run_cuda_streams", "process",
          "one thread per network, each issuing its kernels on its own CUDA stream of the one GPU", devices="one",
          reference="shared-sequential", gpu_only=True),
)


def devices_needed(strategy: str, replicas: int, stages: int) -> int:
    return (replicas if strategy in DATA_PARALLEL else 1) * (stages if strategy in STAGED else 1)


def network_count(impl: Implementation, config) -> int:
    """Networks (or chain parts) one run of `impl` trains."""
    if impl.strategy not in MULTI_NETWORK:
        return 1
    return 2 if impl.chain else len(config.networks)


def run_devices(impl: Implementation, config) -> int:
    """Devices one run of `impl` occupies under `config`."""
    if impl.devices == "one":
        return 1
    if impl.devices == "each":
        return network_count(impl, config)
    return devices_needed(impl.strategy, config.parallel.replicas, config.model_parallel.stages)


def run_processes(impl: Implementation, config) -> int:
    """Processes a run starts: one for the "process" launcher, else one per device, or per network where
    several networks share a device."""
    if impl.launcher == "process":
        return 1
    if impl.strategy in MULTI_NETWORK:
        return network_count(impl, config)
    return run_devices(impl, config)


def find(framework: str, implementation: str) -> Implementation:
    if framework not in FRAMEWORKS:
        raise UserError(f"unknown framework {framework!r} (expected one of: {', '.join(FRAMEWORKS)})")
    for impl in REGISTRY:
        if impl.framework == framework and impl.name == implementation:
            return impl
    names = ", ".join(i.name for i in REGISTRY if i.framework == framework)
    raise UserError(f"unknown implementation {implementation!r} for {framework} (expected one of: {names})")


def for_strategy(strategy: str) -> list[Implementation]:
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r} (expected one of: {', '.join(STRATEGIES)})")
    return [i for i in REGISTRY if i.strategy == strategy]


# ---- what this machine can run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    cpu_cores: int
    gpus: int
    frameworks: frozenset[str]  # installed: "tf", "torch"
    horovod_frameworks: frozenset[str]  # Horovod built with: "tf", "torch"

    @property
    def devices(self) -> int:
        """Devices a replica can own: GPUs where there are any, else CPU cores (split into logical devices)."""
        return self.gpus or self.cpu_cores


def _count_gpus() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    gpus = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = min(gpus, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return gpus


def _horovod_frameworks() -> frozenset[str]:
    # Looks at the compiled extensions without importing horovod (which would import a framework).
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    root = Path(next(iter(spec.submodule_search_locations)))
    built = set()
    if list((root / "torch").glob("mpi_lib_v2*.so")):
        built.add("torch")
    if list((root / "tensorflow").glob("mpi_lib*.so")):
        built.add("tf")
    return frozenset(built)


@functools.cache
def this_machine() -> Machine:
    frameworks = {fw for fw, mod in (("tf", "tensorflow"), ("torch", "torch")) if importlib.util.find_spec(mod)}
    return Machine(len(os.sched_getaffinity(0)), _count_gpus(), frozenset(frameworks), _horovod_frameworks())


def unavailable_reason(impl: Implementation, machine: Machine, devices: int = 2, config=None) -> str | None:
    """None when `impl` can run here (with `devices` devices for its run, and `config` where given);
    otherwise why not, in words a user can act on."""
    mp = config.model_parallel if config is not None else None
    if impl.micro_batches_at_least_stages and mp is not None and mp.micro_batches < mp.stages:
        return f"needs model_parallel.micro_batches >= stages (it is {mp.micro_batches} < {mp.stages})"
    if impl.framework not in machine.frameworks:
        return f"{FRAMEWORK_NAMES[impl.framework]} is not installed (run `make setup`)"
    if impl.horovod and impl.framework not in machine.horovod_frameworks:
        return f"Horovod is not installed with {FRAMEWORK_NAMES[impl.framework]} support (run `make setup`)"
    if impl.gpu_only and impl.strategy == "shared-device" and machine.gpus < 1:
        return "needs a GPU, this machine has none"
    if impl.gpu_only and impl.strategy != "shared-device" and machine.gpus < max(devices, 2):
        return f"needs {max(devices, 2)} GPUs, this machine has {machine.gpus}"
    return None


def check_devices(impl: Implementation, machine: Machine, devices: int, oversubscribe: bool) -> None:
    if devices <= 1 or oversubscribe:
        return
    if devices > machine.devices:
        kind = "GPUs" if machine.gpus else "CPU cores"
        what = {"mirrored": "replicas", "model-parallel": "stages", "pipeline": "stages", "independent": "networks, one device each,",
                "collaborative": "networks, one device each,"}.get(impl.strategy, "devices (replicas x stages)")
        raise UserError(
            f"{devices} {what} but this machine has {machine.devices} {kind} "
            "(set parallel.oversubscribe: true to run anyway; timings are then meaningless)"
        )
