"""Run configuration: YAML -> validated, typed config. Unknown keys are rejected by name.

The same resolved config (written as JSON into each run directory) drives every framework, so two runs
can only differ by the framework and the strategy, never by a default that one side filled in differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from xfw.common.errors import UserError
from xfw.common.spec.model_specs import (  # noqa: F401 (re-exported: the config's model section)
    MODEL_SPEC_TAGS,
    BatchNormConfig,
    CNNSpec,
    MLPSpec,
    ModelSpec,
    ResNetSpec,
    Section,
    TransformerSpec,
)
from xfw.common.spec.models import model_kind
from xfw.common.strategies import SyncConfig

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"


# Default parity tolerances under mixed precision: about 1.5-2x the largest relative loss difference measured on
# the shipped configs (README "Each framework at its best": bfloat16 3.5e-2 same framework, 7.2e-2 across;
# float16 1.2e-2 and 8.9e-3).
MIXED_BF16_SAME, MIXED_BF16_CROSS = 5e-2, 1e-1
MIXED_F16_SAME, MIXED_F16_CROSS = 2e-2, 2e-2


NATIVE_LOADER = {"workers": 0, "prefetch": 2, "pin_memory": True}  # data.pipeline native's defaults


class DataConfig(Section):
    kind: Literal[
        "synthetic_regression", "synthetic_classification", "digits", "npz", "synthetic_images", "markov_text"
    ] = "synthetic_regression"
    samples: Annotated[int, Field(gt=0)] = 4096  # generated sets only (markov_text: sequences)
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2  # 0: no held-out split, no evaluation
    path: str | None = None  # npz only: arrays x and y (or x_train/y_train[/x_test/y_test])
    noise: Annotated[float, Field(ge=0)] = 0.1
    # How batches reach the step. preloaded: the training set is one tensor on the device and each step gathers
    # its samples by index inside the step. native: each framework's own input pipeline over the same arrays and
    # the same per-epoch order (TensorFlow tf.data, distributed by the strategy; PyTorch a DataLoader with a
    # DistributedSampler), batches prepared ahead of the step; the time each step waits for its batch is reported.
    pipeline: Literal["preloaded", "native"] = "preloaded"
    # native only (unset: the default named). Loading workers: PyTorch DataLoader num_workers (default 0: the training
    # process loads), TensorFlow map num_parallel_calls (0: AUTOTUNE).
    workers: Annotated[int, Field(ge=0)] | None = None
    # native only. Batches prepared ahead (default 2): tf.data prefetch buffer; DataLoader prefetch_factor (per worker).
    prefetch: Annotated[int, Field(ge=1)] | None = None
    # native only. DataLoader pin_memory (default true: page-locked host batches, copied to the GPU asynchronously);
    # GPU runs only.
    pin_memory: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _loader_defaults(cls, data):
        """A native pipeline's unset loader settings get their defaults, written into the resolved config."""
        if isinstance(data, dict) and data.get("pipeline") == "native":
            data = {**NATIVE_LOADER, **{k: v for k, v in data.items() if v is not None}}
        return data

    @model_validator(mode="after")
    def _check_pipeline(self) -> DataConfig:
        if self.pipeline == "preloaded":
            given = [name for name in NATIVE_LOADER if getattr(self, name) is not None]
            if given:
                raise ValueError(f"data.{given[0]} applies to data.pipeline native only (pipeline is preloaded)")
        return self

    @model_validator(mode="after")
    def _check_path(self) -> DataConfig:
        if self.kind == "npz" and not self.path:
            raise ValueError("data.path is required when data.kind is npz")
        if self.kind != "npz" and self.path:
            raise ValueError(f"data.path is only used with data.kind npz (kind is {self.kind})")
        return self


class ScheduleConfig(Section):
    """The learning rate at each step, tabulated once in common/spec/schedules.py and read by both frameworks."""

    # constant: optimizer.lr throughout; warmup_cosine: linear warm-up from lr/warmup_steps to lr over
    # warmup_steps, then cosine decay to lr x final_ratio at the last step; step: lr x gamma^(step // every).
    kind: Literal["constant", "warmup_cosine", "step"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    final_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    every: Annotated[int, Field(gt=0)] = 100
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1


class SGDConfig(Section):
    kind: Literal["sgd"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    # Keras SGD decays the weights apart from the gradient (w -= lr*wd*w), torch SGD adds wd*w to the gradient
    # (so it enters the momentum): the same update without momentum, not with it (common/spec/semantics.py).
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    schedule: ScheduleConfig = ScheduleConfig()


class AdamConfig(Section):
    kind: Literal["adam"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    epsilon: Annotated[float, Field(gt=0)] = 1e-7
    schedule: ScheduleConfig = ScheduleConfig()


class AdamWConfig(Section):
    """Adam with decoupled weight decay (Loshchilov & Hutter): keras.optimizers.AdamW, torch.optim.AdamW."""

    kind: Literal["adamw"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    epsilon: Annotated[float, Field(gt=0)] = 1e-7
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    schedule: ScheduleConfig = ScheduleConfig()


OptimizerConfig = Annotated[SGDConfig | AdamConfig | AdamWConfig, Field(discriminator="kind")]


class TrainingConfig(Section):
    global_batch: Annotated[int, Field(gt=0)] = 32
    steps: Annotated[int, Field(gt=0)] = 300
    # First steps are timed apart (graph tracing, allocator warm-up) and excluded from throughput.
    warmup_steps: Annotated[int, Field(ge=1)] = 10
    # The timed steps are cut into this many windows; throughput is the median over windows (and repeats).
    timing_windows: Annotated[int, Field(ge=1)] = 10
    # Throughput comparisons say "faster" or "slower" only when the ratio differs from 1 by more than this AND
    # its whole plausible range (both runs' interquartile ranges) is on that side of 1; else "no clear difference".
    verdict_band: Annotated[float, Field(ge=0, lt=1)] = 0.05
    # Gradients rescaled so that their global L2 norm (over every parameter, after averaging over replicas) is at
    # most this: Keras global_clipnorm, torch clip_grad_norm_. Unset: no clipping.
    clip_global_norm: Annotated[float, Field(gt=0)] | None = None
    # Gradient accumulation: each replica's share of a step is processed in this many micro-batches, one after
    # another, their gradients averaged into one update (the batch no longer has to fit at once).
    accumulation_steps: Annotated[int, Field(ge=1)] = 1
    # Weak scaling: every replica trains this many samples per step, so a run of R replicas has a global batch
    # of R x per_replica_batch (one device: per_replica_batch). Unset: strong scaling, global_batch split R ways.
    per_replica_batch: Annotated[int, Field(gt=0)] | None = None
    # Keras fit implementations only: steps run per call into the compiled train function (model.compile's
    # steps_per_execution); timing windows and progress then move in these units.
    steps_per_execution: Annotated[int, Field(ge=1)] = 1
    # Where the time goes: this many steps at the end of warm-up run under the framework's profiler and their time
    # is split into compute, communication, optimizer update, input and the rest (single-device and data-parallel
    # runs; at most warmup_steps - 1, so that the first step's tracing and compiling stay out). 0: no profiling.
    profile_steps: Annotated[int, Field(ge=0)] = 3

    @model_validator(mode="after")
    def _check_steps(self) -> TrainingConfig:
        if self.steps - self.warmup_steps < self.timing_windows:
            raise ValueError(
                f"steps ({self.steps}) must exceed warmup_steps ({self.warmup_steps}) by at least timing_windows "
                f"({self.timing_windows})"
            )
        timed = self.steps - self.warmup_steps
        if timed < self.timing_windows * self.steps_per_execution:
            raise ValueError(
                f"steps ({self.steps}) must exceed warmup_steps ({self.warmup_steps}) by at least timing_windows x "
                f"steps_per_execution ({self.timing_windows} x {self.steps_per_execution}): a Keras fit window is "
                "whole executions"
            )
        return self


class DDPEngine(Section):
    """torch DistributedDataParallel's own arguments (torch-ddp). Unset: DDP's default."""

    bucket_cap_mb: Annotated[float, Field(gt=0)] | None = None  # gradients all-reduced in buckets of this size
    gradient_as_bucket_view: bool | None = None  # .grad are views into the buckets (no copy)
    static_graph: bool | None = None  # the same parameters used every step: DDP may skip its per-step search
    # A DDP communication hook (torch.distributed.algorithms.ddp_comm_hooks) in place of DDP's float32 all-reduce:
    # fp16 sends the gradients as float16 (fp16_compress_hook: the run is then held to the float16 tolerance);
    # powersgd sends a rank-`powersgd_rank` approximation of each matrix gradient (PowerSGD with error feedback, from
    # the second step on; vectors and matrices it would not shrink by 2x go uncompressed): another algorithm, whose
    # curve against one device is shown, not judged.
    comm_hook: Literal["fp16", "powersgd"] | None = None
    powersgd_rank: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _check(self) -> DDPEngine:
        if self.powersgd_rank is not None and self.comm_hook != "powersgd":
            raise ValueError("powersgd_rank applies to comm_hook powersgd")
        return self


class HorovodEngine(Section):
    """Horovod's tensor fusion and compression (tf-horovod, torch-horovod). Unset: Horovod's default."""

    fusion_threshold_mb: Annotated[int, Field(ge=0)] | None = None  # horovodrun --fusion-threshold-mb (0: no fusion)
    cycle_time_ms: Annotated[float, Field(gt=0)] | None = None  # horovodrun --cycle-time-ms
    # hvd.Compression: fp16 sends the gradients as float16 (the run is then held to the float16 tolerance).
    compression: Literal["none", "fp16"] | None = None


class CollectiveEngine(Section):
    """TensorFlow's collective CommunicationOptions (MultiWorkerMirroredStrategy: tf-multi-worker and
    tf-fit-multi-worker). Unset: TensorFlow's default."""

    implementation: Literal["auto", "ring", "nccl"] | None = None  # NCCL needs a GPU per worker
    bytes_per_pack: Annotated[int, Field(ge=0)] | None = None  # gradients packed into all-reduces of this size


class EngineConfig(Section):
    """Options passed through to each engine, per engine; recorded with every run that uses it (env.engine)."""

    ddp: DDPEngine = DDPEngine()
    horovod: HorovodEngine = HorovodEngine()
    tf_collective: CollectiveEngine = CollectiveEngine()

    def given(self, engine: str) -> dict:
        """The options set for `engine` (those left unset keep the engine's own default)."""
        return {k: v for k, v in getattr(self, engine).model_dump().items() if v is not None}


class NetworkConfig(Section):
    """Multi-host runs on this machine (execute/hosts.py): each host a network namespace, joined by veth links to a
    bridge. Applies to the implementations that start several processes (torchrun, TF_CONFIG, horovodrun); one-process
    runs stay on one host."""

    hosts: Annotated[int, Field(ge=1)] = 1  # 1: no namespaces, every process on this machine's loopback
    # Each host's link limited to this rate in both directions (tc tbf), e.g. 1gbit, 100mbit; None: unlimited.
    rate: str | None = None

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        from xfw.common.execute.hosts import check_rate

        return None if value is None else check_rate(value)


class ParallelConfig(Section):
    replicas: Annotated[int, Field(gt=0)] = 2
    threads_per_replica: Annotated[int, Field(gt=0)] = 1
    # Allow more replicas than devices (CPU cores where there is no GPU). Timings are then meaningless.
    oversubscribe: bool = False
    engine: EngineConfig = EngineConfig()


class ModelParallelConfig(Section):
    # Stages the model's layers are split into (model-parallel, pipeline, hybrid).
    stages: Annotated[int, Field(gt=0)] = 2
    # Names of the layers that begin stages 2..S (dense0, dense1, ... for an MLP; conv0, pool0, flatten, dense0, ...
    # for a CNN; stage0_block1, ... for a ResNet; block1, ..., ln_f, head for a Transformer); empty: the split that
    # balances compute (forward FLOPs per sample) across stages.
    split_points: list[str] = []
    # Pipeline: the global batch (hybrid: each replica's share) is cut into this many micro-batches.
    micro_batches: Annotated[int, Field(gt=0)] = 4

    @model_validator(mode="after")
    def _check(self) -> ModelParallelConfig:
        if self.split_points and len(self.split_points) != self.stages - 1:
            raise ValueError(f"{self.stages} stages need {self.stages - 1} split_points, got {len(self.split_points)}")
        return self


class RuntimeConfig(Section):
    determinism: bool = True
    # float32, or mixed precision: weights and the optimizer in float32, matmuls and convolutions in bfloat16 or
    # float16 (Keras's mixed policy / torch.autocast; float16 with dynamic loss scaling). Single-device and
    # data-parallel runs.
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    # Each framework's own compiler for the forward pass, the loss and their backward: TensorFlow XLA
    # (tf.function(jit_compile=True)), PyTorch torch.compile (inductor). The first steps pay for compiling (warm-up).
    compile: bool = False
    # TensorFloat-32 for float32 matmuls and convolutions on NVIDIA GPUs (Ampere and newer): TensorFlow allows it
    # by default, PyTorch only for convolutions; xfw sets both frameworks to this value, so they compute alike
    # (off: IEEE float32, what exact parity needs). No effect on a CPU.
    tf32: bool = False
    timeout_s: Annotated[float, Field(gt=0)] = 600.0  # per run (per repeat), enforced by the parent process


class Tolerances(Section):
    same_framework: Annotated[float, Field(gt=0)]
    cross_framework: Annotated[float, Field(gt=0)]


class ParityConfig(Section):
    # Largest relative per-step loss difference allowed between two runs of the same framework
    # (parallel vs single device) and between the two frameworks, in float32.
    same_framework: Annotated[float, Field(gt=0)] = 1e-5
    cross_framework: Annotated[float, Field(gt=0)] = 1e-5
    # The same under mixed precision (runtime.precision): every product rounded to 8 (bfloat16) or 11 (float16)
    # significant bits. Defaults measured on the shipped configs (README "Precision").
    mixed_bfloat16: Tolerances = Tolerances(same_framework=MIXED_BF16_SAME, cross_framework=MIXED_BF16_CROSS)
    mixed_float16: Tolerances = Tolerances(same_framework=MIXED_F16_SAME, cross_framework=MIXED_F16_CROSS)
    # The rounding envelope: each framework's single-device run once more with every initial weight moved by one
    # ulp; how far its loss drifts from the unmoved run's, step by step, is what float32 rounding alone does on
    # this config. Set, every one-network comparison also says whether its curves stay within this factor of
    # that envelope ("within rounding") or from which step they leave it. Unset: not measured (two runs fewer).
    envelope_factor: Annotated[float, Field(gt=1)] | None = None

    def tolerance(self, kind: str, precision: str) -> float:
        """The tolerance of a `kind` ("same_framework" | "cross_framework") comparison at `precision`."""
        return getattr(self if precision == "float32" else getattr(self, precision), kind)


class NetworkSpec(Section):
    """One of several networks (independent, collaborative, shared-device): the top-level model, data, loss
    and optimizer unless given here. Training (batch, steps) is shared, so networks step in lockstep."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    # Seed of the initial weights; default: the top-level one + the network's index, so networks start
    # apart. Data and sample order come from the top-level seed: every network sees the same batches.
    init_seed: int | None = None
    model: ModelSpec | None = None
    data: DataConfig | None = None
    loss: Literal["mse", "cross_entropy"] | None = None
    optimizer: OptimizerConfig | None = None


class CollaborativeConfig(Section):
    # Mutual learning: each network's loss is its task loss + mutual_weight x the divergence of its
    # predictions from its partner's (KL for classification, mean squared difference for regression).
    mutual_weight: Annotated[float, Field(ge=0)] = 1.0
    # Chain: the top-level model cut into an encoder and a head network at this layer (a name as in
    # model_parallel.split_points);
    # unset: the split that balances compute (FLOPs). The head may use its own optimizer.
    chain_split: str | None = None
    head_optimizer: OptimizerConfig | None = None


class SharedDeviceConfig(Section):
    # Size sweep: every MLP network gets two hidden layers of this width, one sweep point per width.
    # Empty: the networks as configured, one point.
    hidden_widths: list[Annotated[int, Field(gt=0)]] = []
    # Concurrency "helps" or "hurts" only when combined throughput differs from sequential by more than this.
    verdict_band: Annotated[float, Field(ge=0, lt=1)] = 0.05


def _default_networks() -> list[NetworkSpec]:
    return [NetworkSpec(name="net-a"), NetworkSpec(name="net-b")]


class Config(Section):
    seed: int = 0  # data (synthetic sets), train/test split, sample order and, unless init_seed is set, weights
    init_seed: int | None = None
    model: ModelSpec = MLPSpec()
    data: DataConfig = DataConfig()
    loss: Literal["mse", "cross_entropy"] = "mse"
    optimizer: OptimizerConfig = SGDConfig()
    training: TrainingConfig = TrainingConfig()
    parallel: ParallelConfig = ParallelConfig()
    sync: SyncConfig = SyncConfig()
    network: NetworkConfig = NetworkConfig()
    model_parallel: ModelParallelConfig = ModelParallelConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    parity: ParityConfig = ParityConfig()
    networks: list[NetworkSpec] = Field(default_factory=_default_networks, min_length=1)
    collaborative: CollaborativeConfig = CollaborativeConfig()
    shared_device: SharedDeviceConfig = SharedDeviceConfig()

    @property
    def weights_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    @model_validator(mode="after")
    def _check_networks(self) -> Config:
        names = [n.name for n in self.networks]
        if len(set(names)) != len(names):
            raise ValueError(f"networks: names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _check_consistency(self) -> Config:
        per, replicas = self.training.per_replica_batch, self.parallel.replicas
        explicit_global = "global_batch" in self.training.model_fields_set
        if per is not None and explicit_global and self.training.global_batch != per * replicas:
            raise ValueError(
                f"training.global_batch {self.training.global_batch} is not training.per_replica_batch {per} x "
                f"parallel.replicas {replicas}: set one of them (global_batch: strong scaling, per_replica_batch: weak)"
            )
        if self.training.per_replica_batch is None and self.training.global_batch % self.parallel.replicas:
            raise ValueError(
                f"training.global_batch {self.training.global_batch} is not divisible by parallel.replicas "
                f"{self.parallel.replicas}"
            )
        per_replica = self.training.per_replica_batch or self.training.global_batch // self.parallel.replicas
        if per_replica % self.training.accumulation_steps:
            raise ValueError(
                f"training.accumulation_steps {self.training.accumulation_steps} does not divide each replica's "
                f"batch ({self.training.global_batch} / {self.parallel.replicas} replicas = {per_replica})"
            )
        schedule = self.optimizer.schedule
        if schedule.kind == "warmup_cosine" and schedule.warmup_steps >= self.training.steps:
            raise ValueError(
                f"optimizer.schedule.warmup_steps {schedule.warmup_steps} leaves no step to decay over "
                f"(training.steps is {self.training.steps})"
            )
        classification = self.data.kind in ("synthetic_classification", "digits", "synthetic_images", "markov_text")
        if classification and self.loss != "cross_entropy":
            raise ValueError(f"data.kind {self.data.kind} is a classification set: use loss cross_entropy")
        if self.data.kind == "synthetic_regression" and self.loss != "mse":
            raise ValueError("data.kind synthetic_regression needs loss mse")
        kind = model_kind(self.model)
        if self.data.kind not in kind.data_kinds:
            accepted = " or ".join(kind.data_kinds)
            raise ValueError(f"model {kind.name} needs {kind.input_layout} data: data.kind {accepted}")
        return self


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(
        str(p) for p in first["loc"] if not (isinstance(p, str) and p in (*MODEL_SPEC_TAGS, "sgd", "adam"))
    )
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'"
    if first["type"] == "union_tag_invalid":
        return f"{where}.kind: unknown value {first['input'].get('kind')!r} (expected {first['ctx']['expected_tags']})"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"--set {key}: cannot parse value {raw!r}") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        path, value = _parse_override(item)
        set_key(raw, path, value, f"--set {item}")
    return raw


def set_key(raw: dict, path: list[str], value, what: str) -> None:
    """raw[a][b][c] = value for path [a, b, c], making the sections that are missing; `what` names the setting
    in the error when a part of the path is not a section."""
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{what}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


def load_raw(path: str | Path | None) -> dict:
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"malformed YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"config {path} must be a mapping at the top level")
    return raw


def build_config(raw: dict) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"config: {_format_validation_error(err)}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), replicas: int | None = None) -> Config:
    raw = apply_overrides(load_raw(path), list(overrides))
    if replicas is not None:
        raw.setdefault("parallel", {})["replicas"] = replicas
    return build_config(raw)


def config_from_dict(data: dict) -> Config:
    return Config.model_validate(data)


def network_config(config: Config, index: int) -> Config:
    """Network `index` of config.networks as a whole Config: exactly what `xfw run --impl single` would be
    given to train that network alone (its solo run)."""
    net = config.networks[index]
    raw = config.model_dump(mode="json", exclude={"networks"})
    raw["init_seed"] = config.weights_seed + index if net.init_seed is None else net.init_seed
    for key in ("model", "data", "loss", "optimizer"):
        value = getattr(net, key)
        if value is not None:
            raw[key] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    raw["networks"] = [{"name": net.name}]
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"config: networks[{index}] ({net.name}): {_format_validation_error(err)}") from None


def config_for_replicas(config: Config, replicas: int) -> Config:
    """The config one run trains with: under weak scaling (training.per_replica_batch), a global batch of
    replicas x per_replica_batch; otherwise the config as it is."""
    per = config.training.per_replica_batch
    if per is None:
        return config
    raw = config.model_dump(mode="json")
    raw["training"].pop("per_replica_batch")
    raw["training"]["global_batch"] = per * replicas
    return build_config(raw)


def network_configs(config: Config) -> list[Config]:
    return [network_config(config, i) for i in range(len(config.networks))]


def with_hidden_width(config: Config, width: int) -> Config:
    """The config with every MLP network's hidden layers replaced by two of `width` units (the shared-device
    size sweep); the networks' own model entries are resized the same way."""

    def resized(model) -> dict:
        if model.kind != "mlp":
            raise UserError(f"shared_device.hidden_widths resizes mlp networks only (found a {model.kind})")
        return model.model_copy(update={"layers": [model.layers[0], width, width, model.layers[-1]]}).model_dump(
            mode="json"
        )

    raw = config.model_dump(mode="json")
    raw["model"] = resized(config.model)
    for i, net in enumerate(config.networks):
        if net.model is not None:
            raw["networks"][i]["model"] = resized(net.model)
    raw["shared_device"]["hidden_widths"] = []
    return build_config(raw)
