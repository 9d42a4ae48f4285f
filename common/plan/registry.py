"""The one registry: (framework, strategy, implementation) -> the function that trains and the launcher
that starts it. `xfw list`, `xfw run` and `xfw compare` read only this table."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from packaging.version import Version

from xfw.common.errors import UserError
from xfw.common.spec.models import is_state, parameter_shapes

FRAMEWORKS = ("tf", "torch")
FRAMEWORK_NAMES = {"tf": "TensorFlow", "torch": "PyTorch"}


class Parity(StrEnum):
    """How an implementation's loss curve is held against its reference's."""

    SAME_FRAMEWORK = "same_framework"  # every step within parity.same_framework (reordered sums round differently)
    IDENTICAL = "identical"  # bit-identical: the run computes exactly what the reference computes
    CROSS_FRAMEWORK = "cross_framework"  # the other framework's twin, within parity.cross_framework
    NOT_JUDGED = "not_judged"  # the curve is meant to differ (e.g. another algorithm): diffs shown, no pass/fail


@dataclass(frozen=True)
class Strategy:
    """What a strategy is, what its runs are compared against and which config sections it reads. The rest
    of xfw asks this descriptor instead of naming strategies (README: "Adding a strategy")."""

    name: str
    description: str
    data_parallel: bool = False  # parallel.replicas replicas of the model (or of each stage)
    staged: bool = False  # the model split into model_parallel.stages stages
    micro_batched: bool = False  # each batch cut into model_parallel.micro_batches micro-batches
    several_networks: bool = False  # trains config.networks; results hold one curve per network
    min_networks: int = 1
    exchanges: bool = False  # the networks exchange intermediate results: same data, loss and shapes
    ensemble: bool = False  # independent networks of one task: their test predictions are averaged
    # The replicas step on their own and average their weights every sync.every_k_steps steps (local SGD): with
    # k > 1 another algorithm than one device's, so their curves are diffed against it, not judged.
    local_steps: bool = False
    # Workers apply their gradients to parameter servers as they arrive, each from the weights it last read
    # (asynchronous): with one worker one device's algorithm, with more not reproducible step for step, so their
    # curves are diffed against it and their staleness reported, not judged.
    asynchronous: bool = False
    # The strategy whose implementations are run beside this one's as references ("single": each framework's
    # single-device run); None: the references are among this strategy's own implementations.
    reference_strategy: str | None = "single"
    parity: Parity = Parity.SAME_FRAMEWORK  # how each implementation is held against its reference
    # Which TensorFlow runs are diffed against their PyTorch twin: "all", or "references" only (where every
    # other run is identical to its reference, their twins' diff is the references' diff).
    twins: str = "all"
    sweep: str | None = None  # config key of a list of sizes: every implementation runs at each
    device_unit: str = "devices (replicas x stages)"  # what the devices are, for the too-many-devices error
    # Sections beyond model/data/optimizer/training that apply (shared_device.verdict_band: every verdict on
    # several networks' combined throughput).
    config_sections: tuple[str, ...] = ()

    def devices(self, replicas: int, stages: int) -> int:
        """Devices one run occupies under the data/model-parallel rule (replicas x stages)."""
        return (replicas if self.data_parallel else 1) * (stages if self.staged else 1)


_STRATEGY_LIST = (
    Strategy(
        "single",
        "one device, no parallelism: the reference every parallel run is diffed against",
        reference_strategy=None,
        device_unit="device",
    ),
    Strategy(
        "mirrored",
        "synchronous data parallelism: every replica holds the whole model, gradients are averaged each step",
        data_parallel=True,
        device_unit="replicas",
        config_sections=("parallel",),
    ),
    Strategy(
        "local-sgd",
        "periodic model averaging (local SGD): every replica steps on its block with its own optimizer, the weights "
        "averaged every sync.every_k_steps steps; k = 1 is synchronous data parallelism",
        data_parallel=True,
        local_steps=True,
        device_unit="replicas",
        config_sections=("parallel", "sync"),
    ),
    Strategy(
        "parameter-server",
        "asynchronous training: parameter servers hold the weights, each worker reads them, computes a whole "
        "batch's gradients and the servers apply them as they arrive (staleness reported); one worker is one device",
        data_parallel=True,
        asynchronous=True,
        device_unit="workers",
        config_sections=("parallel", "sync"),
    ),
    Strategy(
        "model-parallel",
        "the layers split into stages on different devices; activations and gradients cross between them",
        staged=True,
        device_unit="stages",
        config_sections=("model_parallel",),
    ),
    Strategy(
        "pipeline",
        "model-parallel stages fed with micro-batches, so stages work at the same time (GPipe, 1F1B)",
        staged=True,
        micro_batched=True,
        device_unit="stages",
        config_sections=("model_parallel",),
    ),
    Strategy(
        "hybrid",
        "data x model parallelism: R replicas of an S-stage split, gradients averaged across each stage's replicas",
        data_parallel=True,
        staged=True,
        micro_batched=True,
        config_sections=("parallel", "model_parallel"),
    ),
    Strategy(
        "independent",
        "K separate networks (config `networks`) trained at the same time, each on its own device "
        "or process, against the same K one after another; ensemble evaluation at the end",
        several_networks=True,
        ensemble=True,
        reference_strategy=None,
        parity=Parity.IDENTICAL,
        twins="references",
        device_unit="networks, one device each,",
        config_sections=("networks", "shared_device"),
    ),
    Strategy(
        "collaborative",
        "networks on different devices that exchange intermediate results every step: mutual "
        "learning (predictions) and an encoder -> head chain (activations and their gradients)",
        several_networks=True,
        min_networks=2,
        exchanges=True,
        reference_strategy=None,
        device_unit="networks, one device each,",
        config_sections=("networks", "collaborative", "shared_device"),
    ),
    Strategy(
        "shared-device",
        "two (or more) networks on ONE device: one after another, in threads, in processes "
        "(CUDA streams on a GPU); does concurrency help or hurt, over a sweep of model sizes",
        several_networks=True,
        min_networks=2,
        reference_strategy=None,
        parity=Parity.IDENTICAL,
        twins="references",
        sweep="shared_device.hidden_widths",
        config_sections=("networks", "shared_device"),
    ),
)
STRATEGY = {s.name: s for s in _STRATEGY_LIST}
# Name -> description (`xfw compare --help`, README); every strategy has entries on both sides (tests/test_layout.py).
STRATEGIES = {s.name: s.description for s in _STRATEGY_LIST}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGY[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r} (expected one of: {', '.join(STRATEGY)})") from None


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
    # Why it cannot compute BatchNorm statistics over the global batch (model.sync_batchnorm); None: it can.
    no_sync_batchnorm: str | None = None
    # Why it cannot clip by the global norm of the averaged gradients (training.clip_global_norm); None: it can.
    no_global_clipping: str | None = None
    # Why it cannot train in mixed precision (runtime.precision), or compile (runtime.compile); None: it can.
    no_mixed_precision: str | None = None
    no_compile: str | None = None
    # The engine whose options (config parallel.engine.<engine>) it passes through: ddp, horovod, tf_collective.
    engine: str | None = None
    # Trains through Keras model.fit (no custom loop): always fed by tf.data, one batch per optimizer update.
    keras_fit: bool = False
    # Why the installed libraries cannot run it under a config (a known bug, checked by version); None: they can.
    library_bug: Callable[[object], str | None] | None = None
    reference: str = "single"  # the same framework's implementation this one is diffed against
    twin: str | None = None  # the other framework's implementation to diff against (default: same name)
    # A process that only coordinates (TensorFlow's chief, which schedules the steps on the workers): one more
    # process than devices and servers.
    coordinator: bool = False

    @property
    def id(self) -> str:
        return f"{self.framework}-{self.name}"

    @property
    def kind(self) -> Strategy:
        """The strategy's descriptor."""
        return STRATEGY[self.strategy]


# Why Keras 3's optimizers cannot clip by the global norm under a strategy with several replicas.
KERAS_CLIPS_PER_REPLICA = (
    "Keras 3 clips inside apply_gradients BEFORE its cross-replica all-reduce "
    "(keras/src/optimizers/base_optimizer.py), so global_clipnorm would clip each replica's share"
)


# Why local SGD's replicas cannot synchronise BatchNorm statistics.
LOCAL_BATCHNORM = (
    "local SGD's replicas step on their own between averagings; BatchNorm statistics over the global batch would "
    "need a collective in every forward pass, which local SGD exists to avoid"
)


# Why the parameter-server implementations train in float32 and uncompiled only.
ASYNC_FLOAT32 = (
    "the parameter-server implementations are built for float32 only: float16's loss scaling would have to skip an "
    "overflowed update on every server at once, which an asynchronous update has no step to do, and bfloat16 "
    "autocast in the workers was not built or tested"
)
ASYNC_EAGER_EXCHANGE = (
    "each update is a pull of the weights, a step and a push of the gradients across processes: xfw compiles "
    "whole-model steps only, and this step is split by the exchange"
)


# The newest Keras seen with the two fit bugs below (xfw's tf-fit-multi-worker, and tf-fit-mirrored with
# steps_per_execution > 1); a newer Keras is tried. Seen: 3.15.1 with TensorFlow 2.21.0 on CPU, and in every Keras 3
# before it according to the issues cited.
KERAS_FIT_LAST_BROKEN = "3.15.1"


def _keras_with_fit_bugs() -> str | None:
    """The installed Keras's version where it is one with the fit bugs; None where it is newer (or absent)."""
    try:
        installed = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        return None
    return installed if Version(installed) <= Version(KERAS_FIT_LAST_BROKEN) else None


def keras_fit_multi_worker_bug(config=None) -> str | None:
    """Why the installed Keras cannot fit under MultiWorkerMirroredStrategy (whatever the config); None where it may."""
    version = _keras_with_fit_bugs()
    if version is None:
        return None
    return (
        f"Keras {version}'s model.fit stops before its first step under MultiWorkerMirroredStrategy: it reduces "
        "the first (x, y) batch with strategy.reduce, which the multi-worker strategy cannot do for a nest "
        "(keras-team/keras#20585, tensorflow/tensorflow#72388); the custom loop (tf-multi-worker) runs"
    )


def keras_fit_mirrored_bug(config) -> str | None:
    """Why the installed Keras cannot fit under MirroredStrategy with steps_per_execution > 1; None where it may."""
    version = _keras_with_fit_bugs()
    k = config.training.steps_per_execution if config is not None else 1
    if version is None or k == 1:
        return None
    return (
        f"Keras {version}'s model.fit under MirroredStrategy fails with steps_per_execution {k} > 1 (\"You must "
        "feed a value for placeholder tensor 'while/cond/Placeholder'\", keras-team/keras#19246); set "
        "training.steps_per_execution=1"
    )


def _impl(framework, strategy, name, module, function, launcher, description, **kw) -> Implementation:
    return Implementation(
        framework, strategy, name, f"xfw.{framework}_impl.{module}", function, launcher, description, **kw
    )


REGISTRY: tuple[Implementation, ...] = (
    _impl(
        "tf", "single", "single", "single", "run_single", "process", "Keras model, custom tf.function loop, one device"
    ),
    _impl(
        "tf",
        "mirrored",
        "mirrored-strategy",
        "mirrored",
        "run_mirrored_strategy",
        "process",
        "tf.distribute.MirroredStrategy, one process, N devices (GPUs, or logical CPU devices)",
        no_global_clipping=KERAS_CLIPS_PER_REPLICA,
    ),
    _impl(
        "tf",
        "mirrored",
        "multi-worker",
        "mirrored",
        "run_multi_worker",
        "tf_config",
        "tf.distribute.MultiWorkerMirroredStrategy, N processes with TF_CONFIG",
        engine="tf_collective",
        no_global_clipping=KERAS_CLIPS_PER_REPLICA,
    ),
    _impl(
        "tf",
        "mirrored",
        "manual-placement",
        "mirrored",
        "run_manual_placement",
        "process",
        "one tf.device per replica, gradients averaged explicitly, one process",
        no_sync_batchnorm="each replica's forward pass runs whole in one graph without a replica context, so "
        "Keras's synchronized BatchNormalization has no replicas to reduce over",
        no_compile="every replica reads the one copy of the weights from its own device, and an XLA cluster "
        "compiled for one device cannot read a variable that lives on another",
    ),
    _impl(
        "tf",
        "mirrored",
        "horovod",
        "horovod",
        "run_horovod",
        "horovodrun",
        "horovod.tensorflow, grouped_allreduce of gradients, launched by horovodrun",
        horovod=True,
        engine="horovod",
    ),
    _impl(
        "tf",
        "single",
        "fit",
        "keras_fit",
        "run_fit",
        "process",
        "Keras model.compile + model.fit, one device, fed by tf.data (no torch twin: diffed with the custom loop)",
        keras_fit=True,
    ),
    _impl(
        "tf",
        "mirrored",
        "fit-mirrored",
        "keras_fit",
        "run_fit_mirrored",
        "process",
        "Keras model.fit under MirroredStrategy's scope, one process, N devices, fed by tf.data",
        keras_fit=True,
        library_bug=keras_fit_mirrored_bug,
        no_global_clipping=KERAS_CLIPS_PER_REPLICA,
    ),
    _impl(
        "tf",
        "mirrored",
        "fit-multi-worker",
        "keras_fit",
        "run_fit_multi_worker",
        "tf_config",
        "Keras model.fit under MultiWorkerMirroredStrategy's scope, N processes with TF_CONFIG, fed by tf.data",
        keras_fit=True,
        engine="tf_collective",
        library_bug=keras_fit_multi_worker_bug,
        no_global_clipping=KERAS_CLIPS_PER_REPLICA,
    ),
    _impl("torch", "single", "single", "single", "run_single", "process", "nn.Module, plain loop, one device"),
    _impl(
        "torch",
        "mirrored",
        "ddp",
        "mirrored",
        "run_ddp",
        "torchrun",
        "DistributedDataParallel launched by torchrun (gloo on CPU, nccl on GPU)",
        engine="ddp",
    ),
    _impl(
        "torch",
        "mirrored",
        "allreduce",
        "mirrored",
        "run_allreduce",
        "torchrun",
        "explicit torch.distributed.all_reduce of every gradient, launched by torchrun",
    ),
    _impl(
        "torch",
        "mirrored",
        "data-parallel",
        "mirrored",
        "run_data_parallel",
        "process",
        "nn.DataParallel, one process scattering each batch over the GPUs",
        gpu_only=True,
        no_sync_batchnorm="nn.DataParallel replicates the module every step; SyncBatchNorm works only under "
        "DistributedDataParallel",
        no_mixed_precision="nn.DataParallel runs each replica's forward in a thread of its own, which torch.autocast "
        "(thread-local) does not reach",
    ),
    _impl(
        "torch",
        "mirrored",
        "horovod",
        "horovod",
        "run_horovod",
        "horovodrun",
        "horovod.torch DistributedOptimizer, launched by horovodrun",
        horovod=True,
        engine="horovod",
    ),
    # ---- local SGD ---------------------------------------------------------------------------------------
    _impl(
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
    _impl(
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
    _impl(
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
    _impl(
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
    # ---- asynchronous parameter servers -------------------------------------------------------------------
    _impl(
        "tf",
        "parameter-server",
        "parameter-server",
        "parameter_server",
        "run_parameter_server",
        "tf_config",
        "ParameterServerStrategy: TF_CONFIG chief, worker and ps tasks; the chief's ClusterCoordinator schedules "
        "each step on a free worker, which updates the variables on the ps tasks",
        coordinator=True,
        no_mixed_precision=ASYNC_FLOAT32,
        no_compile=ASYNC_EAGER_EXCHANGE,
    ),
    _impl(
        "torch",
        "parameter-server",
        "parameter-server",
        "parameter_server",
        "run_parameter_server",
        "torchrun",
        "torch.distributed.rpc: server ranks hold the parameters and apply gradients as they arrive; worker ranks "
        "pull the weights and push a batch's gradients",
        no_mixed_precision=ASYNC_FLOAT32,
        no_compile=ASYNC_EAGER_EXCHANGE,
    ),
    _impl(
        "tf",
        "model-parallel",
        "placed-stages",
        "model_parallel",
        "run_placed_stages",
        "process",
        "one tf.device per stage in one process (GPUs, or logical CPU devices)",
    ),
    _impl(
        "torch",
        "model-parallel",
        "placed-stages",
        "model_parallel",
        "run_placed_stages",
        "process",
        "stages on different GPUs in one process, tensors moved with .to(device)",
        gpu_only=True,
    ),
    _impl(
        "torch",
        "model-parallel",
        "send-recv",
        "model_parallel",
        "run_send_recv",
        "torchrun",
        "one process per stage, activations and gradients exchanged with dist.send/recv",
    ),
    _impl(
        "tf",
        "pipeline",
        "gpipe",
        "model_parallel",
        "run_placed_stages",
        "process",
        "micro-batches through tf.device-placed stages, all forwards then all backwards, one process",
    ),
    _impl(
        "torch",
        "pipeline",
        "gpipe",
        "model_parallel",
        "run_gpipe",
        "torchrun",
        "torch.distributed.pipelining ScheduleGPipe, one process per stage",
    ),
    _impl(
        "torch",
        "pipeline",
        "1f1b",
        "model_parallel",
        "run_1f1b",
        "torchrun",
        "torch.distributed.pipelining Schedule1F1B, one process per stage",
        micro_batches_at_least_stages=True,
    ),
    _impl(
        "tf",
        "hybrid",
        "hybrid",
        "model_parallel",
        "run_placed_stages",
        "process",
        "R replicas of tf.device-placed stages, gradients averaged across replicas, one process",
        no_sync_batchnorm="replicas are placed by hand in one graph without a replica context",
    ),
    _impl(
        "torch",
        "hybrid",
        "hybrid",
        "model_parallel",
        "run_hybrid",
        "torchrun",
        "R x S processes: a GPipe pipeline per replica, gradients all-reduced in a process group per stage",
        no_sync_batchnorm="each replica's pipeline normalises its micro-batches on its own",
    ),
    # ---- several networks: independent ------------------------------------------------------------
    _impl(
        "tf",
        "independent",
        "sequential",
        "networks",
        "run_sequential",
        "process",
        "the K networks one after another in one process, on one device: each network's solo run",
        devices="one",
        reference="sequential",
    ),
    _impl(
        "tf",
        "independent",
        "placed",
        "networks",
        "run_placed_networks",
        "process",
        "one tf.function steps all K networks, each under its own tf.device; the executor runs them at once",
        devices="each",
        reference="sequential",
        twin="processes",
    ),
    _impl(
        "tf",
        "independent",
        "processes",
        "networks",
        "run_processes",
        "tf_config",
        "one process per network (TF_CONFIG), MultiWorkerMirroredStrategy collectives for the start barrier and "
        "the ensemble all-gather",
        devices="each",
        reference="sequential",
    ),
    _impl(
        "torch",
        "independent",
        "sequential",
        "networks",
        "run_sequential",
        "process",
        "the K networks one after another in one process, on one device: each network's solo run",
        devices="one",
        reference="sequential",
    ),
    _impl(
        "torch",
        "independent",
        "processes",
        "networks",
        "run_processes",
        "torchrun",
        "one process per network (torchrun), gloo/nccl for the start barrier and the ensemble all_gather",
        devices="each",
        reference="sequential",
    ),
    # ---- several networks: collaborative -----------------------------------------------------------
    _impl(
        "tf",
        "collaborative",
        "mutual",
        "collaborative",
        "run_mutual",
        "process",
        "mutual learning, all networks on one device: the reference",
        devices="one",
        reference="mutual",
    ),
    _impl(
        "tf",
        "collaborative",
        "mutual-placed",
        "collaborative",
        "run_mutual",
        "process",
        "mutual learning, each network under its own tf.device, predictions cross devices every step",
        devices="each",
        reference="mutual",
        twin="mutual-distributed",
    ),
    _impl(
        "tf",
        "collaborative",
        "chain",
        "collaborative",
        "run_chain",
        "process",
        "encoder -> head, both networks on one device: the reference",
        devices="one",
        chain=True,
        reference="chain",
    ),
    _impl(
        "tf",
        "collaborative",
        "chain-placed",
        "collaborative",
        "run_chain",
        "process",
        "encoder and head under their own tf.device: activations forward, gradients back every step",
        devices="each",
        chain=True,
        reference="chain",
        twin="chain-send-recv",
    ),
    _impl(
        "torch",
        "collaborative",
        "mutual",
        "collaborative",
        "run_mutual",
        "process",
        "mutual learning, all networks on one device: the reference",
        devices="one",
        reference="mutual",
    ),
    _impl(
        "torch",
        "collaborative",
        "mutual-distributed",
        "collaborative",
        "run_mutual_distributed",
        "torchrun",
        "mutual learning, one process per network, predictions exchanged with dist.all_gather every step",
        devices="each",
        reference="mutual",
    ),
    _impl(
        "torch",
        "collaborative",
        "chain",
        "collaborative",
        "run_chain",
        "process",
        "encoder -> head, both networks on one device: the reference",
        devices="one",
        chain=True,
        reference="chain",
    ),
    _impl(
        "torch",
        "collaborative",
        "chain-send-recv",
        "collaborative",
        "run_chain_send_recv",
        "torchrun",
        "encoder and head in two processes: activations forward, gradients back with dist.send/recv",
        devices="each",
        chain=True,
        reference="chain",
    ),
    # ---- several networks: sharing one device ------------------------------------------------------
    _impl(
        "tf",
        "shared-device",
        "shared-sequential",
        "networks",
        "run_sequential",
        "process",
        "the networks one after another on the device: each alone",
        devices="one",
        reference="shared-sequential",
    ),
    _impl(
        "tf",
        "shared-device",
        "shared-threads",
        "networks",
        "run_threads",
        "process",
        "one Python thread per network in one process, both on the device at once",
        devices="one",
        reference="shared-sequential",
    ),
    _impl(
        "tf",
        "shared-device",
        "shared-processes",
        "networks",
        "run_processes",
        "tf_config",
        "one process per network (TF_CONFIG), all on the same device",
        devices="one",
        reference="shared-sequential",
    ),
    _impl(
        "torch",
        "shared-device",
        "shared-sequential",
        "networks",
        "run_sequential",
        "process",
        "the networks one after another on the device: each alone",
        devices="one",
        reference="shared-sequential",
    ),
    _impl(
        "torch",
        "shared-device",
        "shared-threads",
        "networks",
        "run_threads",
        "process",
        "one Python thread per network in one process, both on the device at once",
        devices="one",
        reference="shared-sequential",
    ),
    _impl(
        "torch",
        "shared-device",
        "shared-processes",
        "networks",
        "run_processes",
        "torchrun",
        "one process per network (torchrun), all on the same device",
        devices="one",
        reference="shared-sequential",
    ),
    _impl(
        "torch",
        "shared-device",
        "shared-cuda-streams",
        "networks",
        "run_cuda_streams",
        "process",
        "one thread per network, each issuing its kernels on its own CUDA stream of the one GPU",
        devices="one",
        reference="shared-sequential",
        gpu_only=True,
    ),
)


def network_count(impl: Implementation, config) -> int:
    """Networks (or chain parts) one run of `impl` trains."""
    if not impl.kind.several_networks:
        return 1
    return 2 if impl.chain else len(config.networks)


def run_devices(impl: Implementation, config) -> int:
    """Devices one run of `impl` occupies under `config`."""
    if impl.devices == "one":
        return 1
    if impl.devices == "each":
        return network_count(impl, config)
    return impl.kind.devices(config.parallel.replicas, config.model_parallel.stages)


def run_processes(impl: Implementation, config) -> int:
    """Processes a run starts: one for the "process" launcher, else one per device, or per network where
    several networks share a device."""
    if impl.launcher == "process":
        return 1
    if impl.kind.several_networks:
        return network_count(impl, config)
    if impl.kind.asynchronous:  # the workers, the servers, and a coordinator where the engine has one
        return run_devices(impl, config) + config.sync.parameter_servers + int(impl.coordinator)
    return run_devices(impl, config)


def find(framework: str, implementation: str) -> Implementation:
    if framework not in FRAMEWORKS:
        raise UserError(f"unknown framework {framework!r} (expected one of: {', '.join(FRAMEWORKS)})")
    for impl in REGISTRY:
        if impl.framework == framework and impl.name == implementation:
            return impl
    names = ", ".join(i.name for i in REGISTRY if i.framework == framework)
    raise UserError(f"unknown implementation {implementation!r} for {framework} (expected one of: {names})")


def find_id(run_id: str) -> Implementation:
    """By run id (tf-single, torch-ddp, ...), as `xfw list` and the tables name runs."""
    for impl in REGISTRY:
        if impl.id == run_id:
            return impl
    raise UserError(
        f"{run_id!r} is neither a run folder nor a run id (expected a path, or one of: "
        f"{', '.join(i.id for i in REGISTRY)})"
    )


def for_strategy(name: str) -> list[Implementation]:
    get_strategy(name)  # unknown: a UserError naming the known ones
    return [i for i in REGISTRY if i.strategy == name]


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


def gpu_of_rank(rank: int, gpus: int, devices: int) -> int:
    """The GPU a rank runs on: its own where the run has a GPU per rank; else ranks take turns over the run's GPUs
    (several networks sharing one device, or more replicas than GPUs)."""
    return rank % min(gpus, devices)


def ranks_share_a_gpu(processes: int, gpus: int, devices: int) -> bool:
    """Whether two processes of a run land on one GPU (gpu_of_rank): NCCL refuses a group whose ranks do."""
    return gpus > 0 and processes > min(gpus, devices)


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


def gpu_memory_mib(index: int) -> int:
    """Total memory of the machine's GPU `index`, in MiB, as nvidia-smi reports it."""
    out = subprocess.run(
        ["nvidia-smi", f"--id={index}", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return int(out.stdout.split()[0])


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
    if config is not None:
        reason = model_unsupported(impl, config)
        if reason:
            return reason
    bug = impl.library_bug(config) if impl.library_bug is not None else None
    if bug:
        return bug
    if impl.horovod and impl.framework not in machine.horovod_frameworks:
        return f"Horovod is not installed with {FRAMEWORK_NAMES[impl.framework]} support (run `make setup`)"
    if impl.gpu_only and impl.devices == "one" and machine.gpus < 1:
        return "needs a GPU, this machine has none"
    if impl.gpu_only and impl.devices != "one" and machine.gpus < max(devices, 2):
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
    if not machine.gpus or impl.launcher == "process":
        return None
    if not ranks_share_a_gpu(run_processes(impl, config), machine.gpus, run_devices(impl, config)):
        return None
    if impl.horovod:
        return "its processes would share a GPU, and Horovod's GPU collectives are NCCL's, which needs one GPU per rank"
    if impl.framework == "torch" and (impl.kind.staged or impl.kind.exchanges):
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
    whole_model_steps = impl.kind.data_parallel or impl.strategy == "single"
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
    if config.runtime.compile and impl.framework == "torch" and not _cxx_compiler():
        return (
            "torch.compile (inductor) needs a C++ compiler and finds none "
            f"({os.environ.get('CXX') or 'g++'} is not on PATH; set CXX)"
        )
    if mixed and impl.no_mixed_precision:
        return f"cannot train in {config.runtime.precision}: {impl.no_mixed_precision}"
    if impl.kind.asynchronous:
        reason = parameter_server_refusal(config)
        if reason:
            return reason
        if impl.framework == "torch" and config.sync.parameter_servers > 1 and config.training.clip_global_norm:
            return (
                "cannot clip by the global norm (training.clip_global_norm) with several servers: each would clip "
                "its share of the weights by that share's norm"
            )
    clipping = config.training.clip_global_norm is not None
    if clipping and impl.no_global_clipping and config.parallel.replicas > 1:
        return f"cannot clip by the global norm (training.clip_global_norm): {impl.no_global_clipping}"
    if clipping and impl.kind.staged and impl.launcher != "process":
        return (
            "cannot clip by the global norm (training.clip_global_norm): each stage's process updates its own "
            "parameters and would clip them by their own norm"
        )
    return None


def parameter_server_refusal(config) -> str | None:
    """Why the parameter-server strategy cannot run config as given, whatever the framework; None when it can."""
    servers = config.sync.parameter_servers
    weights = [name for name, _ in parameter_shapes(config.model) if not is_state(name)]
    if servers > len(weights):
        return (
            f"sync.parameter_servers {servers} is more than the model's {len(weights)} weight tensors: the servers "
            "share the tensors out, and a server would hold none"
        )
    if config.data.pipeline == "native":
        return (
            "data.pipeline native: a parameter-server worker takes whichever step the servers hand it next, not "
            "the next batch of a pipeline of its own"
        )
    if config.training.per_replica_batch is not None:
        return (
            "training.per_replica_batch (weak scaling): every update of a parameter-server run is one worker's "
            "whole training.global_batch"
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
