"""What a strategy is, framework-free: its descriptor, the mesh axes it uses, its process roles, how its runs are
judged, what it adds to a result and a report. One module per strategy beside this one defines a `Strategy` (a
subclass where it needs a hook) and its `Implementation`s, and registers both; compare, launch, records, report,
orchestrate and localize ask these objects instead of naming strategies. Framework code lives in
tf_impl/<module>.py and torch_impl/<module>.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from xfw.common.plan.mesh import Mesh

if TYPE_CHECKING:
    from xfw.common.spec.config import Config


class Framework(StrEnum):
    TF = "tf"
    TORCH = "torch"

    @property
    def display(self) -> str:
        return {"tf": "TensorFlow", "torch": "PyTorch"}[self.value]

    @property
    def package(self) -> str:
        """The module that is the framework (for finding it installed without importing it)."""
        return {"tf": "tensorflow", "torch": "torch"}[self.value]


FRAMEWORKS = tuple(f.value for f in Framework)
FRAMEWORK_NAMES = {f.value: f.display for f in Framework}


class Launcher(StrEnum):
    """How a run's processes are started (common/plan/launch.py plans each)."""

    PROCESS = "process"  # one plain process
    TORCHRUN = "torchrun"  # torch.distributed.run
    HOROVODRUN = "horovodrun"
    TF_CONFIG = "tf_config"  # one process per task, each told the cluster in TF_CONFIG


class DeviceUse(StrEnum):
    """How the devices of a several-network run are counted."""

    STRATEGY = "strategy"  # the strategy's mesh (replicas x stages)
    ONE = "one"  # every network on one device
    EACH = "each"  # one device per network (or per part of a chain)


class Parity(StrEnum):
    """How an implementation's loss curve is held against its reference's."""

    SAME_FRAMEWORK = "same_framework"  # every step within parity.same_framework (reordered sums round differently)
    IDENTICAL = "identical"  # bit-identical: the run computes exactly what the reference computes
    CROSS_FRAMEWORK = "cross_framework"  # the other framework's twin, within parity.cross_framework
    NOT_JUDGED = "not_judged"  # the curve is meant to differ (e.g. another algorithm): diffs shown, no pass/fail


@dataclass(frozen=True)
class Role:
    """One process of a run: its task (TF_CONFIG's job name where the engine has jobs), its index within the task,
    and the data-parallel worker it trains (None: it serves weights or coordinates, and trains no batch)."""

    task: str
    index: int
    worker: int | None
    reports_progress: bool = True  # writes progress files the parent watches for stalls


@dataclass(frozen=True)
class Strategy:
    """What a strategy is, what its runs are compared against and which config sections it reads. Subclasses
    override the hooks below; the defaults are the behaviour of a synchronous strategy."""

    name: str
    description: str
    data_parallel: bool = False  # parallel.replicas replicas of the model (or of each stage): the data axis
    staged: bool = False  # the model split into model_parallel.stages stages: the pipeline axis
    micro_batched: bool = False  # each batch cut into model_parallel.micro_batches micro-batches
    several_networks: bool = False  # trains config.networks; results hold one curve per network
    min_networks: int = 1
    exchanges: bool = False  # the networks exchange intermediate results: same data, loss and shapes
    ensemble: bool = False  # independent networks of one task: their test predictions are averaged
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
    # Whether a run trains the whole model in each step of one process (single device and data parallelism):
    # what mixed precision, compilers and native input pipelines are built for.
    whole_model_steps: bool = False
    # Whether rank 0 profiles a few steps with the framework's profiler (the step breakdown).
    profiled: bool = False
    # Whether the replicas cut the global batch between them (synchronous data parallelism); False: each worker
    # steps on a whole global batch (parameter servers).
    shards_batch: bool = True
    # The result.json fields this strategy's runs fill (typed records declared in its module, optional fields of
    # RunResult and RunEntry), copied from a run's first repeat into its entry.
    result_fields: tuple[str, ...] = ()

    # ---- layout ---------------------------------------------------------------------------------------------

    def mesh(self, config: Config) -> Mesh:
        """The parallel layout of one run under `config`."""
        return Mesh.of(
            data=config.parallel.replicas if self.data_parallel else 1,
            pipeline=config.model_parallel.stages if self.staged else 1,
        )

    def roles(self, impl: Implementation, config: Config, processes: int) -> tuple[Role, ...]:
        """The processes of one run, in launcher rank order. Default: every process a worker."""
        return tuple(Role("worker", i, i) for i in range(processes))

    # ---- refusals, judging, reporting -------------------------------------------------------------------------

    def refusal(self, config: Config, impl: Implementation | None = None) -> str | None:
        """Why this strategy cannot run `config` (for `impl`; None: whatever the implementation); None: it can."""
        return None

    def judged_apart(self, a: Any, b: Any, kind: Parity, config: Config) -> str | None:
        """Why run `a` of this strategy is not held step for step to `b` (another algorithm, by design): the
        reason, shown in the comparison's note; None where the pair is judged as `kind` says."""
        return None

    def run_notes(self, entry: Any) -> list[str]:
        """Lines this strategy adds to a run's notes in the report (e.g. staleness)."""
        return []

    def repeats_may_differ(self, entry: Any) -> str | None:
        """Why a run's repeats may have different curves (e.g. asynchronous updates); None: they may not."""
        return None


@dataclass(frozen=True)
class Implementation:
    framework: Framework
    strategy: str
    name: str
    module: str  # imported lazily, in the worker process only
    function: str
    launcher: Launcher
    description: str
    gpu_only: bool = False  # needs one GPU per device of the run
    horovod: bool = False
    micro_batches_at_least_stages: bool = False  # a schedule that fills the pipeline before it drains
    # Multi-network strategies: ONE device for every network, or one device EACH (per network, or per part of a
    # chain); STRATEGY: the data/model-parallel rule (replicas x stages).
    devices: DeviceUse = DeviceUse.STRATEGY
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
    library_bug: Callable[[Any], str | None] | None = None
    reference: str = "single"  # the same framework's implementation this one is diffed against
    twin: str | None = None  # the other framework's implementation to diff against (default: same name)
    # A process that only coordinates (TensorFlow's chief, which schedules the steps on the workers): one more
    # process than devices and servers.
    coordinator: bool = False
    # `xfw localize` can replay it step by step (tf_impl/trace.py, torch_impl/trace.py build its replicas).
    traced: bool = False

    @property
    def id(self) -> str:
        return f"{self.framework}-{self.name}"

    @property
    def kind(self) -> Strategy:
        """The strategy's descriptor."""
        return _REGISTERED[self.strategy]


def implementation(
    framework: str, strategy: str, name: str, module: str, function: str, launcher: str, description: str, **kw: Any
) -> Implementation:
    """One registry row: `module` is the file's name in tf_impl/ or torch_impl/."""
    return Implementation(
        Framework(framework),
        strategy,
        name,
        f"xfw.{framework}_impl.{module}",
        function,
        Launcher(launcher),
        description,
        **kw,
    )


# Every strategy by name, filled as each module registers itself (common/strategies/__init__.py orders them).
_REGISTERED: dict[str, Strategy] = {}


def register(strategy: Strategy, implementations: tuple[Implementation, ...]) -> None:
    """Called once by each strategy module: checks its rows name it, and makes `Implementation.kind` find it."""
    if strategy.name in _REGISTERED:
        raise ValueError(f"strategy {strategy.name} registered twice")
    for impl in implementations:
        if impl.strategy != strategy.name:
            raise ValueError(f"{impl.id} is registered under {strategy.name}, not its own {impl.strategy}")
    _REGISTERED[strategy.name] = strategy
