"""Typed records of what flows from the workers to the parent to the report:

    rank 0 of a run  -> RunResult / NetworksResult     (result.json, one per repeat)
    parent           -> RunEntry / NetworksRunEntry    (the repeats merged; or SkippedRun / FailedRun)
                     -> Comparison                     (two entries diffed)
                     -> Summary                        (summary.json: all of the above)

Each record serialises to the fields the README documents (model_dump(mode="json")) and reads them back
(model_validate), so `xfw compare`, the report, the tests and later tools (`xfw diff`, studies) share one
schema. Unknown fields are refused: a writer and a reader cannot silently drift apart. Optional fields
that do not apply to a run are written as null."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


# ---- pieces ----------------------------------------------------------------------------------------------


class Window(Record):
    """A stretch of timed training steps."""

    steps: int
    seconds: float


class Timing(Record):
    global_batch: int
    warmup_steps: int
    warmup_s: float
    windows: list[Window]


class ModelInfo(Record):
    parameters: int
    training_flops_per_sample: int


class StageTiming(Record):
    stage: int
    layers: list[str]
    parameters: int
    busy_s_per_step: float
    idle_fraction: float
    busy_exceeds_step: bool


class StageReport(Record):
    """Model-parallel runs: how the model was split and how busy each stage was."""

    stages: int
    devices: int
    micro_batches: int
    boundary_bytes_per_step: int
    per_stage: list[StageTiming]
    busy_method: str


class Spread(Record):
    """Samples/s over the timed windows: interquartile range (and extremes, where recorded)."""

    p25: float
    p75: float
    windows: int | None = None
    min: float | None = None
    max: float | None = None


class Flops(Record):
    training_flops_per_sample: int
    achieved_flops_per_s: float
    peak_flops_per_s: float
    utilization: float


class Exchange(Record):
    """What collaborating networks send each other per step."""

    what: str
    bytes_per_step: int
    split: list[list[str]] | None = None  # the chain: each part's layers


class Ensemble(Record):
    members: list[str]
    method: str
    test_loss: float
    test_accuracy: float | None = None
    best_member: str
    best_member_metric: dict[str, float]
    gain_over_best_member: float
    gain_metric: str


# ---- result.json: what rank 0 of one run (one repeat) writes ---------------------------------------------


class RunIdentity(Record):
    id: str
    framework: str
    strategy: str
    implementation: str


class RunResult(RunIdentity):
    """One network trained by one run."""

    status: Literal["ok"] = "ok"
    loss: list[float]  # per step, the global batch's mean loss
    replicas: int
    devices: int
    processes: int
    replica_weight_max_abs_diff: float  # largest difference between copies of the same weights
    peak_memory_bytes: int
    peak_memory_per_process: list[int]
    peak_memory_kind: str
    timing: Timing
    model: ModelInfo
    model_parallel: StageReport | None = None
    eval: dict[str, float]
    env: dict[str, Any]
    peak_flops_per_s: float
    teardown_error: str | None = None  # set by the parent: a process failed after this was written


class NetworkResult(Record):
    """One of the networks of a several-network run, as rank 0 writes it."""

    index: int  # position in the run's network list (the chain: 0 encoder, 1 head)
    name: str
    device: str
    eval: dict[str, float]
    loss: list[float] | None  # None: a chain's encoder, whose loss is the head's
    warmup_steps: int
    warmup_s: float
    windows: list[Window]
    started_at: float
    timed_started_at: float
    ended_at: float
    busy_s_per_step: float | None  # its own forward+backward, timed alone (collaborative)
    throughput_samples_per_s: float
    throughput_spread: Spread
    step_time_s: float
    timed_s: float
    wait_s_per_step: float | None = None
    parameters: int | None = None
    training_flops_per_sample: int | None = None


class NetworksResult(RunIdentity):
    status: Literal["ok"] = "ok"
    networks: list[NetworkResult]
    devices: int
    processes: int
    wall_s: float
    timed_wall_s: float
    overlap: float  # share of the timed stretch during which the networks trained at the same time
    combined_throughput_samples_per_s: float
    peak_memory_bytes: int
    peak_memory_per_process: list[int]
    peak_memory_kind: str
    global_batch: int
    steps: int
    ensemble: Ensemble | None = None
    exchange: Exchange | None = None
    env: dict[str, Any]
    teardown_error: str | None = None


def read_result(data: dict) -> RunResult | NetworksResult:
    return NetworksResult.model_validate(data) if "networks" in data else RunResult.model_validate(data)


# ---- run entries: the repeats of one implementation merged (summary.json "runs") ------------------------


class RunBase(Record):
    id: str
    framework: str
    strategy: str
    implementation: str
    launcher: str
    description: str
    size: dict[str, int] | None = None  # a sweep point, e.g. {"hidden_width": 128}


class SkippedRun(RunBase):
    status: Literal["skipped"] = "skipped"
    reason: str


class FailedRun(RunBase):
    status: Literal["failed"] = "failed"
    error: str  # first line: the root cause; then the failing process's log tail
    run_dir: str | None = None


class RunEntry(RunBase):
    status: Literal["ok"] = "ok"
    loss: list[float]  # the first repeat's (the others are identical when determinism is on)
    eval: dict[str, float]
    throughput_samples_per_s: float  # median over every timed window of every repeat
    throughput_spread: Spread
    step_time_s: float
    warmup_s: float
    warmup_steps: int
    peak_memory_bytes: int
    peak_memory_kind: str
    peak_memory_per_process: list[int] | None
    replica_weight_max_abs_diff: float
    processes: int
    replicas: int
    devices: int
    flops: Flops
    parameters: int
    repeats: int
    loss_identical_across_repeats: bool
    env: dict[str, Any]
    model_parallel: StageReport | None = None
    result_files: list[str] = []
    teardown_errors: list[str] = []


class NetworkEntry(Record):
    index: int
    name: str
    device: str
    loss: list[float] | None
    eval: dict[str, float]
    throughput_samples_per_s: float
    throughput_spread: Spread
    step_time_s: float
    busy_s_per_step: float | None
    wait_s_per_step: float | None
    parameters: int | None = None
    training_flops_per_sample: int | None = None


class NetworksRunEntry(RunBase):
    status: Literal["ok"] = "ok"
    networks: list[NetworkEntry]
    wall_s: float
    timed_wall_s: float
    overlap: float
    combined_throughput_samples_per_s: float
    throughput_samples_per_s: float  # = combined, so that every ok entry has one throughput
    peak_memory_bytes: int
    peak_memory_kind: str
    peak_memory_per_process: list[int]
    processes: int
    devices: int
    global_batch: int
    repeats: int
    loss_identical_across_repeats: bool
    env: dict[str, Any]
    ensemble: Ensemble | None = None
    exchange: Exchange | None = None
    result_files: list[str] = []
    teardown_errors: list[str] = []


def _entry_tag(value: Any) -> str:
    get = value.get if isinstance(value, dict) else lambda k, d=None: getattr(value, k, d)
    if get("status") != "ok":
        return get("status")
    return "networks" if get("networks") is not None else "ok"


AnyRun = Annotated[
    Union[Annotated[RunEntry, Tag("ok")], Annotated[NetworksRunEntry, Tag("networks")],
          Annotated[SkippedRun, Tag("skipped")], Annotated[FailedRun, Tag("failed")]],
    Discriminator(_entry_tag),
]
OkRun = RunEntry | NetworksRunEntry


# ---- comparisons -----------------------------------------------------------------------------------------


class RatioRange(Record):
    low: float
    high: float


class NetworkDiff(Record):
    max_abs_loss_diff: float
    max_rel_loss_diff: float
    first_step_over_tolerance: int | None
    final_metric_diff: dict[str, float]
    slowdown: float | None = None  # throughput alone / together (identical-kind comparisons)


class Comparison(Record):
    """Run a diffed against run b: loss curves (per network where there are several) and throughput."""

    a: str
    b: str
    kind: str  # registry.Parity: same_framework, identical, cross_framework, not_judged
    tolerance: float | None  # None: not judged
    status: Literal["ok", "not compared"]
    reason: str | None = None  # why not compared
    size: dict[str, int] | None = None
    max_abs_loss_diff: float | None = None
    max_rel_loss_diff: float | None = None
    first_step_over_tolerance: int | None = None
    within_tolerance: bool | None = None  # None: not compared, or not judged
    final_metric_diff: dict[str, float] | None = None
    throughput_ratio: float | None = None  # a / b
    throughput_ratio_spread: RatioRange | None = None
    scaling_efficiency: float | None = None  # a parallel run against one device
    networks: dict[str, NetworkDiff] | None = None
    verdict: str | None = None
    verdict_band: float | None = None
    change: float | None = None


class SweepPoint(Record):
    hidden_width: int
    throughput_ratio: float
    throughput_ratio_spread: RatioRange
    verdict: str
    slowdown: dict[str, float]


class SweepLine(Record):
    run: str
    points: list[SweepPoint]
    flips: list[dict[str, Any]]  # {from, to, verdict_from, verdict_to}: widths between which the verdict changes


class MachineInfo(Record):
    cpu_cores: int
    gpus: int


class Summary(Record):
    xfw_summary_version: int = 1
    strategy: str
    created: str
    repeats: int
    timeout_s: float
    machine: MachineInfo
    config: dict[str, Any]
    runs: list[AnyRun] = []
    comparisons: list[Comparison] = []
    sweep: list[SweepLine] | None = None

    def run(self, run_id: str) -> OkRun | SkippedRun | FailedRun:
        return next(r for r in self.runs if r.id == run_id)
