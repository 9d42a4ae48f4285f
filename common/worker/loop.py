"""The timed training loop both frameworks share, and the rank-side end of a run (gather, then write).

The loop body is only the framework's step function and a list append: per-step losses stay as
framework tensors until the end, so the loop adds no host-device sync. The clock is read at window
boundaries only, after forcing the last step's result (the one sync point per window).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xfw.common.plan.launch import SHARED_GPU_VAR
from xfw.common.plan.runspec import RunSpec
from xfw.common.records import (
    DeviceMemory,
    ModelInfo,
    RunResult,
    StageReport,
    StageTiming,
    Timing,
    Window,
    first_non_finite,
    non_finite_keys,
    strict_json,
)
from xfw.common.spec.data import Fed, work_record
from xfw.common.spec.models import parameter_count, training_flops_per_sample
from xfw.common.spec.partition import boundary_bytes, boundary_bytes_per_step, plan_stages, theoretical_bubble
from xfw.common.spec.semantics import loss_function_name, notes_for, optimizer_hyperparameters
from xfw.common.worker.breakdown import step_breakdown
from xfw.common.worker.faults import maybe_inject

Gather = Callable[[np.ndarray], np.ndarray]  # one all-gather of a float vector; rows in rank order


@dataclass(frozen=True)
class LoopTiming:
    warmup_steps: int
    warmup_s: float
    windows: list[tuple[int, float]]  # (steps, seconds) of each timed window
    # Wall-clock (time.time()) of the first step, of the first timed step and after the last step: runs
    # that train several networks at once line these up to measure how long they overlapped.
    started_at: float = 0.0
    timed_started_at: float = 0.0
    ended_at: float = 0.0
    # Seconds of each timed window spent waiting for the next step's input (inside the window's seconds).
    input_wait_s: list[float] = field(default_factory=list)
    # Where the profiled warm-up steps' time went (common.breakdown.step_breakdown); None: not profiled.
    breakdown: dict | None = None


class StepProfiler(Protocol):
    """A framework's profiler around a few steps (tf_impl/torch_impl training.StepProfiler)."""

    description: str

    def start(self) -> None: ...

    def stop(self) -> dict[str, list[tuple[float, float]]]:
        """The profiled events' intervals (seconds) per category of common.breakdown.CATEGORIES."""
        ...


def timed_loop(
    step: Callable[[Any], Any],
    step_inputs: Iterable[Any],
    steps: int,
    sync: Callable[[Any], None],
    warmup_steps: int,
    windows: int,
    on_progress: Callable[[int], None],
    after_warmup: Callable[[], object] | None = None,
    profiler: StepProfiler | None = None,
    profile_steps: int = 0,
) -> tuple[list[Any], LoopTiming]:
    """Calls `step` on each of the first `steps` inputs in order and keeps what it returns (the step's loss).
    `step_inputs` is a list of precomputed inputs or an input pipeline's iterator; the time spent getting each
    input is the step's input wait. `after_warmup` runs between warm-up and the timed steps (a barrier, so that
    networks trained at the same time are timed over the same stretch). With a `profiler`, the last
    `profile_steps` warm-up steps run under it (fewer where the warm-up is short: its first step, which traces and
    compiles, never is)."""
    losses: list[Any] = []
    record = losses.append
    inputs = iter(step_inputs)
    clock = time.perf_counter

    def run_steps(count: int) -> float:
        """`count` steps; returns the seconds spent waiting for their inputs."""
        waited = 0.0
        for _ in range(count):
            asked = clock()
            item = next(inputs)
            waited += clock() - asked
            record(step(item))
        return waited

    started_at = time.time()
    start = clock()
    # at most the warm-up's steps after its first (tracing, compiling)
    profiled = min(profile_steps, warmup_steps - 1) if profiler is not None else 0
    run_steps(warmup_steps - profiled)
    breakdown = None
    if profiled:
        assert profiler is not None  # profiled is 0 without one
        sync(losses[-1])
        profiler.start()
        began = clock()
        waited = run_steps(profiled)
        sync(losses[-1])
        wall = clock() - began
        breakdown = step_breakdown(profiler.stop(), wall, waited, profiled) | {"profiler": profiler.description}
    sync(losses[-1])
    warmup_s = clock() - start
    on_progress(warmup_steps)
    if after_warmup is not None:
        after_warmup()
    timed_started_at = time.time()
    bounds = np.linspace(warmup_steps, steps, windows + 1).round().astype(int)
    timed: list[tuple[int, float]] = []
    waits: list[float] = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        start = clock()
        waits.append(run_steps(hi - lo))
        sync(losses[-1])
        timed.append((hi - lo, clock() - start))
        on_progress(hi)  # outside the timed window
    timing = LoopTiming(warmup_steps, warmup_s, timed, started_at, timed_started_at, time.time(), waits, breakdown)
    return losses, timing


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file and rename: readers see the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(strict_json(data), indent=2, allow_nan=False)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk or a lost permission: the old file stays, and no half-written copy
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def progress_path(out_dir: Path, rank: int) -> Path:
    """Each rank's last progress report: the parent's progress bar (rank 0) and, on a timeout, which ranks stopped
    where (the file's modification time is when)."""
    return out_dir / f"progress-rank{rank}.json"


def progress_writer(run: RunSpec, rank: int) -> Callable[[int], None]:
    if rank < 0:  # a second network in the same process: its first network reports
        return lambda step: None
    path = progress_path(Path(run.out_dir), rank)
    steps = run.config.training.steps

    def report(step: int) -> None:
        write_json_atomic(path, {"step": step, "steps": steps})
        maybe_inject(run.id, "training")

    return report


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass(frozen=True)
class RankOutcome:
    """What one process knows at the end of training."""

    local_losses: np.ndarray  # per step: mean loss over this process's samples; NaN where it computes none
    timing: LoopTiming
    weight_copies: list[np.ndarray]  # flat weights of every model copy (or stage copy) this process holds
    peak_memory_bytes: int
    stage: int = 0  # weights are compared only between processes that hold the same stage
    # Measured busy seconds per training step of each stage this process runs (model-parallel runs).
    stage_busy_s: dict[int, float] = field(default_factory=dict)
    # What each replica this process fed trained on (read back from its step inputs).
    fed: list[Fed] = field(default_factory=list)
    # Where the weights of each stage this process runs live (model-parallel runs).
    stage_devices: dict[int, str] = field(default_factory=dict)
    # The framework allocator's peak bytes on each GPU this process used, by the GPU's index on the machine.
    gpu_memory: dict[int, int] = field(default_factory=dict)


def device_memory(processes: list[dict], total: bool = False) -> DeviceMemory | None:
    """The run's GPU memory from each process's {GPU: peak bytes} (gather_json'd, so keys are strings): the
    largest process's, or with `total` the sum over processes (networks sharing a GPU); None where no process
    used a GPU."""
    if not any(p["gpu_memory"] for p in processes):
        return None
    per_process = [int(sum(p["gpu_memory"].values())) for p in processes]
    return DeviceMemory(
        peak_bytes=sum(per_process) if total else max(per_process),
        per_process=per_process,
        kind="sum over the run's processes of each one's peak allocated on its GPUs"
        if total
        else "largest peak allocated on its GPUs of one process",
    )


def gpus_used(processes: list[dict]) -> int:
    """Distinct GPUs the run's processes allocated on (0: none, a CPU run)."""
    return len({gpu for p in processes for gpu in p["gpu_memory"]})


def gather_json(obj, gather: Gather) -> list:
    """Every process's `obj` (JSON-able), in rank order, through two all-gathers of float vectors (the
    lengths, then the padded bytes): the collectives every engine has, whatever it offers for objects.
    Floats round-trip exactly (JSON writes the shortest repr), NaN included."""
    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8).astype(np.float64)
    lengths = gather(np.array([data.size], dtype=np.float64))[:, 0].astype(int)
    padded = np.zeros(int(lengths.max()))
    padded[: data.size] = data
    table = gather(padded)
    return [json.loads(bytes(row[:n].astype(np.uint8))) for row, n in zip(table, lengths)]


def finish_run(
    run: RunSpec,
    outcome: RankOutcome,
    gather: Gather,
    rank: int,
    rank0_extras: Callable[[], dict],
) -> None:
    """Collect every rank's losses, memory, stage timings and weights through the engine's own collective
    (after training, so the result does not depend on a shared file system), then rank 0 writes result.json.
    What each rank reports is a named record (gather_json); the weights, the one large array, go as floats."""
    first = outcome.weight_copies[0].astype(np.float64)
    mine = {
        "losses": outcome.local_losses.astype(np.float64).tolist(),
        "peak_memory_bytes": outcome.peak_memory_bytes,
        # Largest difference between the copies of the weights this process holds (replicas placed in it).
        "local_weight_spread": max(float(np.abs(w.astype(np.float64) - first).max()) for w in outcome.weight_copies),
        "stage": outcome.stage,
        "stage_busy_s": {str(k): v for k, v in outcome.stage_busy_s.items()},
        "work": [work_record(f, rank) for f in outcome.fed],
        "stage_devices": {str(k): v for k, v in outcome.stage_devices.items()},
        "gpu_memory": {str(k): v for k, v in outcome.gpu_memory.items()},
    }
    ranks = gather_json(mine, gather)
    width = parameter_count(run.config.model)  # no process holds more weights than the whole model
    padded = np.full(width, np.nan)
    padded[: first.size] = first
    weights = gather(padded)  # (processes, width), in rank order
    if rank != 0:
        return
    # Equal shards: the mean of the shard means is the batch mean (NaN: a rank that computes no loss). A step
    # with no finite loss on any rank (a diverged run) stays NaN, without numpy's empty-slice warning.
    per_rank = np.array([r["losses"] for r in ranks], dtype=np.float64)
    counted = ~np.isnan(per_rank).all(axis=0)
    losses = np.full(per_rank.shape[1], np.nan)
    with np.errstate(all="ignore"):
        losses[counted] = np.nanmean(per_rank[:, counted], axis=0)
    stage_of = np.array([r["stage"] for r in ranks])
    divergence = max(r["local_weight_spread"] for r in ranks)
    for stage in set(stage_of.tolist()):  # replicas of the same stage must hold the same weights
        rows = weights[stage_of == stage]
        divergence = max(divergence, float(np.nan_to_num(np.abs(rows - rows[0])).max()))
    cfg = run.config
    windows = outcome.timing.windows
    peaks = [int(r["peak_memory_bytes"]) for r in ranks]
    result = {
        **run.identity,
        "loss": [float(v) for v in losses],
        "replicas": run.replicas,
        "devices": run.devices,
        "processes": run.processes,  # ranks that gathered, and any that only serve (TensorFlow's ps tasks)
        "replica_weight_max_abs_diff": divergence,
        "peak_memory_bytes": max(peaks),
        "peak_memory_per_process": peaks,
        "peak_memory_kind": "largest peak resident set size of one process",
        "device_memory": device_memory(ranks),
        "timing": Timing(
            global_batch=cfg.training.global_batch,
            warmup_steps=outcome.timing.warmup_steps,
            warmup_s=outcome.timing.warmup_s,
            windows=[Window(steps=n, seconds=s) for n, s in windows],
            input_wait_s=outcome.timing.input_wait_s,
        ),
        "model": ModelInfo(
            parameters=parameter_count(cfg.model), training_flops_per_sample=training_flops_per_sample(cfg.model)
        ),
        "config": cfg.model_dump(mode="json"),
        "step_breakdown": outcome.timing.breakdown,  # rank 0's profiled steps
        # Model-parallel runs: the first stage's process feeds a replica's inputs, and reports it.
        "work_split": sorted((w for r in ranks for w in r["work"]), key=lambda w: w["replica"]),
    }
    if run.stages > 1:
        # Each stage's busy time as measured by the processes that run it (the slowest, where replicas do).
        busy = [
            max((float(r["stage_busy_s"][str(st)]) for r in ranks if str(st) in r["stage_busy_s"]), default=np.nan)
            for st in range(run.stages)
        ]
        step_s = sum(t for _, t in windows) / sum(n for n, _ in windows)
        where = [
            next((r["stage_devices"][str(st)] for r in ranks if str(st) in r["stage_devices"]), None)
            for st in range(run.stages)
        ]
        result["model_parallel"] = stage_report(run, busy, step_s, where)
    extras = rank0_extras()
    # One device's peak times the devices the run occupied (distinct GPUs where it ran on GPUs, so that ranks
    # sharing one GPU are not credited with two): the most it could reach.
    devices = gpus_used(ranks) or run.devices
    extras["peak_flops_per_s"] = extras["peak_flops"].flops_per_s * devices
    record = RunResult.model_validate(result | extras)
    record.diverged_at_step = first_non_finite(record.loss)
    record.non_finite_metrics = non_finite_keys(record.eval)
    write_json_atomic(Path(run.out_dir) / "result.json", record.to_json())


def stage_report(run: RunSpec, busy_s: list[float], step_s: float, devices: list[str | None]) -> StageReport:
    stages = plan_stages(run.config)
    crossing = [*boundary_bytes(stages, run.config.training.global_batch), None]
    return StageReport(
        stages=run.stages,
        devices=run.devices,
        micro_batches=run.micro_batches,
        boundary_bytes_per_step=boundary_bytes_per_step(stages, run.config.training.global_batch),
        theoretical_bubble=theoretical_bubble(run.stages, run.micro_batches),
        per_stage=[
            StageTiming(
                stage=st.index,
                layers=st.names,
                parameters=st.parameters,
                busy_s_per_step=float(b),
                idle_fraction=float(max(0.0, 1.0 - b / step_s)),
                busy_exceeds_step=bool(b > step_s),
                to_next_stage_bytes_per_step=out,
                device=device,
            )
            for st, b, out, device in zip(stages, busy_s, crossing, devices)
        ],
        busy_method="after training, each stage's forward+backward passes for one step (one per micro-batch) are "
        "timed alone on its device, one process at a time (stages timed at once on a CPU time each other), "
        "median of 20; idle = 1 - busy / measured step time, floored at 0 (busy_exceeds_step: the stage alone "
        "took longer than a whole training step: per-call overhead, e.g. M small convolutions cost more than "
        "one large one)",
    )


def data_pipeline(cfg) -> dict:
    """How the run's batches reached its steps (data.pipeline and, for native, its settings)."""
    d = cfg.data
    if d.pipeline == "preloaded":
        return {"kind": "preloaded"}
    return {"kind": "native", "workers": d.workers, "prefetch": d.prefetch, "pin_memory": d.pin_memory}


def common_env(run: RunSpec, launcher: str, world_size: int) -> dict:
    cfg = run.config
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "launcher": launcher,
        "world_size": world_size,
        "replicas": run.replicas,
        "threads_per_replica": cfg.parallel.threads_per_replica,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),  # the cores this process may run on
        "precision": cfg.runtime.precision,
        "compile": cfg.runtime.compile,
        "determinism": cfg.runtime.determinism,
        "data_pipeline": data_pipeline(cfg),
        # The engine this implementation drives and the options given to it (unset ones: the engine's default).
        "engine": {"name": run.impl.engine, "options": cfg.parallel.engine.given(run.impl.engine)}
        if run.impl.engine
        else None,
        "env_vars": {
            k: os.environ[k]
            for k in (
                "OMP_NUM_THREADS",
                "TF_ENABLE_ONEDNN_OPTS",
                "CUDA_VISIBLE_DEVICES",
                SHARED_GPU_VAR,
                # what horovodrun made of --fusion-threshold-mb (bytes) and --cycle-time-ms, as Horovod reads them
                "HOROVOD_FUSION_THRESHOLD",
                "HOROVOD_CYCLE_TIME",
            )
            if k in os.environ
        },
        "hyperparameters": {
            "optimizer": optimizer_hyperparameters(cfg, run.framework),
            "loss": loss_function_name(cfg, run.framework),
            "global_batch": cfg.training.global_batch,
            # each worker of a strategy that does not cut the batch (parameter servers) steps on all of it
            "per_replica_batch": cfg.training.global_batch // (run.mesh.batch_shards if run.kind.shards_batch else 1),
            "steps": cfg.training.steps,
            "seed": cfg.seed,
        },
        "semantics": notes_for(cfg),
    }
