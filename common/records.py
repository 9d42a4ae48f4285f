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

import math
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationError

from xfw.common.record_types import Bytes, Count, Rate, Real, Record, Share, strict_json  # noqa: F401 (strict_json: re-exported)
from xfw.common.strategies import StrategyResultFields


def first_non_finite(values: list[float] | None) -> int | None:
    """The first step whose value is NaN or infinite: where a run diverged."""
    return next((i for i, v in enumerate(values or []) if not math.isfinite(v)), None)


def non_finite_keys(metrics: dict[str, float]) -> list[str]:
    return sorted(k for k, v in metrics.items() if not math.isfinite(v))


# ---- pieces ----------------------------------------------------------------------------------------------


class Window(Record):
    """A stretch of timed training steps."""

    steps: Count
    seconds: Rate


class Timing(Record):
    global_batch: Count
    warmup_steps: int
    warmup_s: Real
    windows: list[Window]
    # Per window: the seconds of it spent waiting for step inputs (the input pipeline not keeping up).
    input_wait_s: list[Real] = []


class StepBreakdown(Record):
    """Where a step's time went (common/worker/breakdown.py): seconds per step of each category, over `steps` steps run
    under the framework's profiler at the end of warm-up (rank 0's process)."""

    steps: Count
    step_s: Rate  # a profiled step's wall time (the profiler's own cost included; the timed steps ran without it)
    compute_s: Real
    communication_s: Real
    update_s: Real
    input_s: Real
    rest_s: Real
    overlap_s: Real  # communication that ran at the same time as compute (counted as communication above)
    profiler: str  # which profiler, and how its events were sorted


class ModelInfo(Record):
    parameters: int
    training_flops_per_sample: int


class StageTiming(Record):
    stage: int
    layers: list[str]
    parameters: int
    busy_s_per_step: Real
    idle_fraction: Real
    busy_exceeds_step: bool
    # Across the boundary to the next stage per step: activations forward + their gradients back (last: null).
    to_next_stage_bytes_per_step: int | None = None
    device: str | None = None  # where the stage's weights live, as the framework reports it (TF: a device query)


class StageReport(Record):
    """Model-parallel runs: how the model was split and how busy each stage was."""

    stages: int
    devices: Count
    micro_batches: int
    boundary_bytes_per_step: int  # all boundaries together
    # The share of a step each stage idles under the schedule with perfectly even stages and free transfers:
    # (S - 1) / (M + S - 1) for GPipe and 1F1B alike (1F1B saves memory, not bubble); M = 1 without micro-batches.
    theoretical_bubble: Real | None = None
    per_stage: list[StageTiming]
    busy_method: str


class Spread(Record):
    """Samples/s over the timed windows: interquartile range (and extremes, where recorded)."""

    p25: Real
    p75: Real
    windows: int | None = None
    min: Real | None = None
    max: Real | None = None
    # Each repeat's own median (the run's combined throughput for several networks): run-to-run drift.
    repeat_medians: list[Real] | None = None


class PeakFlops(Record):
    """The best square-matmul rate of one device in a run's precision and math mode (common/worker/peak.py): what its
    FLOP utilisation is measured against."""

    flops_per_s: Rate
    matmul_size: Count  # n of the n x n matmul that gave it (the smallest size past which doubling gained < 3%)
    setting: dict[str, Any]  # what it was measured for: framework, device, precision, TF32, threads
    measured_s: Real
    measured_at: str
    cache: str  # the file it is kept in; delete it to measure again
    cached: bool = False  # read from the cache rather than measured by this run


class Flops(Record):
    training_flops_per_sample: int
    achieved_flops_per_s: Real
    peak_flops_per_s: Real  # one device's peak (PeakFlops) times the run's devices
    utilization: Real
    peak: PeakFlops | None = None


class DeviceMemory(Record):
    """GPU memory as each framework's allocator counts it (torch.cuda.max_memory_allocated,
    tf.config.experimental.get_memory_info(...)["peak"]), beside the process RSS: the peak bytes allocated."""

    peak_bytes: Bytes
    per_process: list[int]  # each process's peak, summed over the GPUs it used, in rank order
    kind: str  # the largest one process's (one model), or the sum over processes (several networks)


class Exchange(Record):
    """What collaborating networks send each other per step."""

    what: str
    bytes_per_step: int
    split: list[list[str]] | None = None  # the chain: each part's layers


class Ensemble(Record):
    members: list[str]
    method: str
    test_loss: Real
    test_accuracy: Real | None = None
    best_member: str
    best_member_metric: dict[str, Real]
    gain_over_best_member: Real
    gain_metric: str


# ---- result.json: what rank 0 of one run (one repeat) writes ---------------------------------------------


class ReplicaWork(Record):
    """What one replica (or network) was fed, read back from its step inputs (common.data.work_record): its
    samples per step and a checksum of its (step, sample index) pairs; the replicas' checksums add up (mod 2^64)
    to the global batches' when together they trained on each sample of each global batch exactly once."""

    replica: int
    process: int  # the rank that fed it
    device: str  # where its inputs were placed, as the framework reports it
    steps: Count
    samples_per_step: Count
    checksum: str = Field(pattern=r"^[0-9a-f]{16}$")


class RunIdentity(Record):
    id: str
    framework: str
    strategy: str
    implementation: str


class NetworkUse(Record):
    """A run across several hosts (config network): the bytes each host sent over its link while the run's
    processes lived (rendezvous, the training steps' collectives, the final gathers), measured on the link."""

    hosts: Count
    rate: str | None  # each link's limit (tc tbf), None: unlimited
    bytes_sent: list[int]  # per host
    bytes_per_step: Real  # every host's bytes over the run's steps (setup and the final gathers included)

    @classmethod
    def measured(cls, run, hosts, before: list[int], after: list[int]) -> NetworkUse:
        sent = [b - a for a, b in zip(before, after)]
        return cls(
            hosts=len(hosts),
            rate=run.config.network.rate,
            bytes_sent=sent,
            bytes_per_step=sum(sent) / run.config.training.steps,
        )


class RunResult(StrategyResultFields, RunIdentity):
    """One network trained by one run."""

    status: Literal["ok"] = "ok"
    loss: list[Real]  # per step, the global batch's mean loss
    replicas: Count
    devices: Count
    processes: Count
    replica_weight_max_abs_diff: Real  # largest difference between copies of the same weights
    peak_memory_bytes: Bytes
    peak_memory_per_process: list[int]
    peak_memory_kind: str
    timing: Timing
    model: ModelInfo
    model_parallel: StageReport | None = None
    step_breakdown: StepBreakdown | None = None  # None: not profiled (training.profile_steps 0, or too short a warm-up)
    eval: dict[str, Real]
    env: dict[str, Any]
    peak_flops_per_s: Real
    peak_flops: PeakFlops | None = None  # one device's (peak_flops_per_s: times the run's devices)
    device_memory: DeviceMemory | None = None  # None: no GPU used
    config: dict[str, Any] | None = None  # the resolved config the run trained with (xfw diff checks it)
    work_split: list[ReplicaWork] = []  # one per replica, in replica order: which samples each trained on
    # The first step whose loss is NaN or infinite (null: none), and metrics that are not finite: a diverged
    # run is a result, and never passes a comparison.
    diverged_at_step: int | None = None
    non_finite_metrics: list[str] = []
    teardown_error: str | None = None  # set by the parent: a process failed after this was written
    network: NetworkUse | None = None  # set by the parent: across several hosts, what went over their links


class NetworkResult(Record):
    """One of the networks of a several-network run, as rank 0 writes it."""

    index: int  # position in the run's network list (the chain: 0 encoder, 1 head)
    name: str
    device: str
    eval: dict[str, Real]
    loss: list[Real] | None  # None: a chain's encoder, whose loss is the head's
    warmup_steps: int
    warmup_s: Real
    windows: list[Window]
    started_at: Real
    timed_started_at: Real
    ended_at: Real
    busy_s_per_step: Real | None  # its own forward+backward, timed alone (collaborative)
    throughput_samples_per_s: Rate
    throughput_spread: Spread
    step_time_s: Rate
    timed_s: Real
    wait_s_per_step: Real | None = None
    parameters: int | None = None
    training_flops_per_sample: int | None = None
    work: ReplicaWork | None = None  # what it was fed (the chain's encoder and head: the same batches)
    # The first step whose loss is NaN or infinite (null: none), and metrics that are not finite: a diverged
    # run is a result, and never passes a comparison.
    diverged_at_step: int | None = None
    non_finite_metrics: list[str] = []


class NetworksResult(RunIdentity):
    status: Literal["ok"] = "ok"
    networks: list[NetworkResult]
    devices: Count
    processes: Count
    wall_s: Real
    timed_wall_s: Real
    overlap: Share  # share of the timed stretch during which the networks trained at the same time
    combined_throughput_samples_per_s: Rate
    peak_memory_bytes: Bytes
    peak_memory_per_process: list[int]
    peak_memory_kind: str
    device_memory: DeviceMemory | None = None  # None: no GPU used
    global_batch: Count
    steps: Count
    ensemble: Ensemble | None = None
    exchange: Exchange | None = None
    env: dict[str, Any]
    config: dict[str, Any] | None = None  # the resolved config the run trained with (xfw diff checks it)
    diverged_at_step: int | None = None  # the earliest of its networks'
    teardown_error: str | None = None


def read_result(data: dict) -> RunResult | NetworksResult:
    return NetworksResult.model_validate(data) if "networks" in data else RunResult.model_validate(data)


def first_problem(err: Exception) -> str:
    """One line for a record that did not validate: where (dotted path) and what, e.g. "work_split.0.checksum:
    String should match pattern ..."; the first line of any other error."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"
    return str(err).splitlines()[0]


# ---- run entries: the repeats of one implementation merged (summary.json "runs") ------------------------


class RunBase(Record):
    id: str
    framework: str
    strategy: str
    implementation: str
    launcher: str
    description: str
    size: dict[str, int] | None = None  # a sweep point, e.g. {"hidden_width": 128}
    # More devices x threads than the machine has (parallel.oversubscribe): its throughput is contention, so its
    # comparisons carry no throughput verdict.
    oversubscribed: bool = False
    # "ulp": the run of the rounding envelope (parity.envelope_factor): its reference, with every initial weight
    # moved one ulp. Not compared itself; its drift from the reference is the envelope.
    perturbation: str | None = None


class SkippedRun(RunBase):
    status: Literal["skipped"] = "skipped"
    reason: str


class FailedRun(RunBase):
    status: Literal["failed"] = "failed"
    error: str  # first line: the root cause; then the failing process's log tail
    run_dir: str | None = None


class InterruptedRun(RunBase):
    """The run in flight when xfw was stopped (Ctrl-C, SIGTERM, SIGHUP): its processes were ended, nothing kept."""

    status: Literal["interrupted"] = "interrupted"
    reason: str  # which signal, after how long, the last step reached
    run_dir: str | None = None


class RunEntry(StrategyResultFields, RunBase):
    status: Literal["ok"] = "ok"
    loss: list[Real]  # the first repeat's (the others are identical when determinism is on)
    eval: dict[str, Real]
    throughput_samples_per_s: Rate  # median over every timed window of every repeat
    throughput_spread: Spread
    step_time_s: Rate
    # Median over repeats of the timed steps' mean wait for their input (data.pipeline native: the pipeline's
    # next batch; preloaded: taking the next precomputed index tensor from a list).
    input_wait_s_per_step: Real | None = None
    warmup_s: Real
    warmup_steps: int
    peak_memory_bytes: Bytes
    peak_memory_kind: str
    peak_memory_per_process: list[int] | None
    device_memory: DeviceMemory | None = None  # None: no GPU used
    replica_weight_max_abs_diff: Real
    processes: Count
    replicas: Count
    devices: Count
    flops: Flops
    parameters: int
    repeats: Count
    loss_identical_across_repeats: bool
    env: dict[str, Any]
    model_parallel: StageReport | None = None
    step_breakdown: StepBreakdown | None = None  # the first repeat's
    work_split: list[ReplicaWork] = []  # the first repeat's (every repeat feeds the same samples)
    # The first step whose loss is NaN or infinite (null: none), and metrics that are not finite: a diverged
    # run is a result, and never passes a comparison.
    diverged_at_step: int | None = None
    non_finite_metrics: list[str] = []
    result_files: list[str] = []
    teardown_errors: list[str] = []
    network: NetworkUse | None = None  # across several hosts: the first repeat's bytes over the links


class NetworkEntry(Record):
    index: int
    name: str
    device: str
    loss: list[float] | None
    eval: dict[str, Real]
    throughput_samples_per_s: Rate
    throughput_spread: Spread
    step_time_s: Rate
    busy_s_per_step: Real | None
    wait_s_per_step: Real | None
    parameters: int | None = None
    training_flops_per_sample: int | None = None
    work: ReplicaWork | None = None  # what it was fed (the chain's encoder and head: the same batches)
    # The first step whose loss is NaN or infinite (null: none), and metrics that are not finite: a diverged
    # run is a result, and never passes a comparison.
    diverged_at_step: int | None = None
    non_finite_metrics: list[str] = []


class NetworksRunEntry(RunBase):
    status: Literal["ok"] = "ok"
    networks: list[NetworkEntry]
    wall_s: Real
    timed_wall_s: Real
    overlap: Share
    combined_throughput_samples_per_s: Rate
    combined_per_repeat: list[Real] | None = None  # each repeat's: run-to-run drift
    throughput_samples_per_s: Rate  # = combined, so that every ok entry has one throughput
    peak_memory_bytes: Bytes
    peak_memory_kind: str
    peak_memory_per_process: list[int]
    device_memory: DeviceMemory | None = None  # None: no GPU used
    processes: Count
    devices: Count
    global_batch: Count
    repeats: Count
    loss_identical_across_repeats: bool
    env: dict[str, Any]
    ensemble: Ensemble | None = None
    exchange: Exchange | None = None
    diverged_at_step: int | None = None  # the earliest of its networks'
    result_files: list[str] = []
    teardown_errors: list[str] = []


def _entry_tag(value: Any) -> str | None:
    get = value.get if isinstance(value, dict) else lambda k, d=None: getattr(value, k, d)
    if get("status") != "ok":
        return get("status")
    return "networks" if get("networks") is not None else "ok"


AnyRun = Annotated[
    Annotated[RunEntry, Tag("ok")]
    | Annotated[NetworksRunEntry, Tag("networks")]
    | Annotated[SkippedRun, Tag("skipped")]
    | Annotated[FailedRun, Tag("failed")]
    | Annotated[InterruptedRun, Tag("interrupted")],
    Discriminator(_entry_tag),
]
# ---- comparisons -----------------------------------------------------------------------------------------


class RatioRange(Record):
    """The plausible range of a throughput ratio: from both runs' interquartile ranges (window to window) and,
    with repeats, widened to every repeat's ratio (repeat k of a over repeat k of b: run to run)."""

    low: Real
    high: Real


class NetworkDiff(Record):
    max_abs_loss_diff: Real | None  # over the steps where both losses are finite (null: none is)
    max_rel_loss_diff: Real | None
    first_step_over_tolerance: int | None  # over tolerance, or not finite in either run
    final_metric_diff: dict[str, Real]
    note: str | None = None  # why the curves cannot be at parity (divergence, different lengths)
    slowdown: Real | None = None  # throughput alone / together (identical-kind comparisons)


class Comparison(Record):
    """Run a diffed against run b: loss curves (per network where there are several) and throughput."""

    a: str
    b: str
    kind: str  # registry.Parity: same_framework, identical, cross_framework, not_judged
    tolerance: Real | None  # None: not judged
    status: Literal["ok", "not compared"]
    reason: str | None = None  # why not compared
    size: dict[str, int] | None = None
    max_abs_loss_diff: Real | None = None  # over the steps where both losses are finite
    max_rel_loss_diff: Real | None = None
    first_step_over_tolerance: int | None = None  # over tolerance, or not finite in either run
    within_tolerance: bool | None = None  # None: not compared, or not judged
    note: str | None = None  # why the curves cannot be at parity (divergence, different lengths)
    final_metric_diff: dict[str, Real] | None = None
    throughput_ratio: Real | None = None  # a / b
    throughput_ratio_spread: RatioRange | None = None
    scaling_efficiency: Real | None = None  # a parallel run against one device
    networks: dict[str, NetworkDiff] | None = None
    verdict: str | None = None
    verdict_band: Real | None = None
    change: Real | None = None
    # Repeats behind the verdict (the fewer of the two runs'): with 1, the range is window-to-window spread only.
    repeats: int | None = None
    # parity.envelope_factor: whether the curves stay within that factor of the rounding envelope at every step,
    # and the first step where they do not (None: not measured).
    within_envelope: bool | None = None
    envelope_first_over: int | None = None


class SweepPoint(Record):
    hidden_width: int
    throughput_ratio: Real
    throughput_ratio_spread: RatioRange
    verdict: str
    slowdown: dict[str, Real]


class SweepLine(Record):
    run: str
    points: list[SweepPoint]
    flips: list[dict[str, Any]]  # {from, to, verdict_from, verdict_to}: widths between which the verdict changes


class MachineInfo(Record):
    cpu_cores: int
    gpus: int


class LocalizedPair(Record):
    """`xfw compare --localize`: where a failing comparison's two runs part (common/localize/replay.py)."""

    a: str
    b: str
    folder: str  # localize.md, .json and .png, relative to the compare's folder
    parted: bool | None  # None: the replay failed (error)
    first_step: int | None = None
    verdict: str
    explanation: str
    error: str | None = None


class Summary(Record):
    xfw_summary_version: int = 1
    command: str | None = None  # what produced it, where not `xfw compare --strategy <strategy>` (e.g. xfw diff)
    strategy: str
    created: str
    repeats: Count
    timeout_s: Real
    machine: MachineInfo
    config: dict[str, Any]
    runs: list[AnyRun] = []
    comparisons: list[Comparison] = []
    sweep: list[SweepLine] | None = None
    # The lowest expected training loss any model can reach on the data, where the generator knows it (a
    # Markov chain's entropy rate, nats per token); None where it is unknown.
    loss_floor: Real | None = None
    # Set when xfw was stopped by a signal: which, and during which run. The runs that finished before it are
    # kept; those not started yet are not listed.
    interrupted: str | None = None
    # parity.envelope_factor: per framework, the running maximum of the relative loss difference between its
    # single-device run and the same run from weights moved one ulp (what rounding alone does).
    envelopes: dict[str, list[Real]] | None = None
    # compare --localize: where the failing comparisons' runs part (the first failing pair of each kind).
    localizations: list[LocalizedPair] | None = None
