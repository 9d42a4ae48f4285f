"""The framework-free side of one training process, shared by tf_impl/ and torch_impl/: who this process is
in its run (RankContext), the records the multi-network strategies keep per network, the thread harness
that starts networks together, and the end of a run (environment, then gather and write through
common.loop.finish_run or common.networks.finish_networks).

The framework hands over numpy arrays and callables (evaluate, peak flops, GPU memory, its own environment); nothing
here imports TensorFlow, PyTorch or Horovod."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xfw.common.plan.runspec import RunSpec
from xfw.common.record_types import Record
from xfw.common.records import PeakFlops
from xfw.common.strategies.base import Launcher
from xfw.common.worker.loop import (
    LoopTiming,
    RankOutcome,
    StepProfiler,
    common_env,
    finish_run,
    peak_rss_bytes,
    progress_writer,
    timed_loop,
)
from xfw.common.worker.networks import Gather, NetworkOutcome, finish_networks


def local_gather(vector: np.ndarray) -> np.ndarray:
    """The all-gather of a run with one process: the table is that process's own row."""
    return vector[None]


@dataclass(frozen=True)
class RankContext:
    """What one process knows about its place in the run; built once per process by the implementation."""

    run: RunSpec
    launcher: str
    rank: int = 0
    world_size: int = 1
    # What result.json's env lists as the devices. Multi-network runs list their networks' devices instead
    # (report_networks takes them from the outcomes).
    devices: tuple[str, ...] = ()
    gather: Gather = local_gather  # the engine's all-gather of a float vector, rows in rank order


@dataclass
class Network:
    """One independent network, ready to train: its own run (config), data, model and step.

    Each network trains exactly as its solo run (`xfw run --impl single` on common.config.network_config):
    the same step (single.step_body), weights, sample order and threads. Running several at once may
    change how long they take, never what they compute."""

    index: int
    name: str
    run: RunSpec
    s: Any  # the framework's training.Setup
    model: Any
    step: Any  # single.step_body (undecorated, so that TensorFlow can compose several into one graph)
    device: Any  # where its weights live: a TensorFlow device name or a torch.device


@dataclass
class Member:
    """One network of a collaborative run."""

    index: int
    name: str
    run: RunSpec  # the network's own config (weights seed, model, optimizer)
    model: Any
    optimizer: Any
    device: Any

    def outcome(self, losses: np.ndarray, timing: LoopTiming, evaluation: dict, device: str, busy_s: float, fed):
        """What the member reports at the end: its column of the per-step losses, evaluation, device, own passes,
        and the samples it was fed (common.data.Fed)."""
        column = losses[:, self.index]
        return NetworkOutcome(
            self.index, self.name, column, timing, evaluation, device, busy_s_per_step=busy_s, fed=fed
        )


def train_in_threads(names: list[str], train_one: Callable[[int, int, Callable[[], object]], Any]) -> list:
    """Calls train_one(k, rank, after_warmup) for network k in a thread of its own and returns their results in
    order. A barrier after warm-up, so that the timed steps of the networks run at the same time."""
    barrier = threading.Barrier(len(names))
    results: list = [None] * len(names)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            # Only the first network writes progress (rank -1 writes none).
            results[k] = train_one(k, 0 if k == 0 else -1, barrier.wait)
        except BaseException as exc:  # re-raised in the main thread: a failed network fails the run
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,), name=f"network-{name}") for k, name in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def timed_training(
    run: RunSpec,
    step: Callable[[Any], Any],
    step_inputs: list,
    sync: Callable[[Any], Any],
    rank: int = 0,
    after_warmup: Callable[[], object] | None = None,
    profiler: StepProfiler | None = None,
) -> tuple[list, LoopTiming]:
    """common.loop.timed_loop with the run's warm-up steps and timing windows; each rank reports its progress.
    `profiler`: rank 0 of a single-device or data-parallel run profiles training.profile_steps warm-up steps."""
    t = run.config.training
    progress = progress_writer(run, rank)
    if rank != 0 or not profiled_kind(run):
        profiler = None
    return timed_loop(
        step,
        step_inputs,
        t.steps,
        sync,
        t.warmup_steps,
        t.timing_windows,
        progress,
        after_warmup,
        profiler,
        t.profile_steps,
    )


def profiled_kind(run: RunSpec) -> bool:
    """Whether the run's steps are whole-model steps whose time the breakdown splits (single and data-parallel)."""
    return run.kind.profiled


def environment(
    ctx: RankContext, framework_versions: dict[str, str], intra_op_threads: int, inter_op_threads: int
) -> dict:
    """What result.json records about the software and the process that produced it; the framework supplies
    its versions and thread pool sizes."""
    env = common_env(ctx.run, ctx.launcher, ctx.world_size) | {
        "framework_versions": dict(framework_versions),
        "devices": list(ctx.devices),
        "intra_op_threads": intra_op_threads,
        "inter_op_threads": inter_op_threads,
    }
    if ctx.launcher == Launcher.HOROVODRUN:
        # From the installed package's metadata: importing horovod here would load a framework.
        env["framework_versions"]["horovod"] = importlib.metadata.version("horovod")
    return env


@dataclass(frozen=True)
class FrameworkEnd:
    """What a run asks the framework for at the end: the GPU memory its allocator used in this process (every
    rank), the environment and one device's peak FLOP rate in the run's math mode (rank 0)."""

    environment: Callable[[RankContext], dict]
    peak_flops: Callable[[RunSpec], PeakFlops]
    gpu_memory: Callable[[], dict[int, int]]  # {GPU index on the machine: peak bytes allocated}; {} on a CPU


def report(
    ctx: RankContext,
    losses: np.ndarray,
    timing: LoopTiming,
    weight_copies: list,
    evaluate: Callable[[], dict],
    framework: FrameworkEnd,
    stage: int = 0,
    stage_busy_s: dict | None = None,
    fed: list | None = None,
    stage_devices: dict | None = None,
    strategy_fields: dict[str, Record] | None = None,
) -> None:
    """The end of a one-model run: every rank's outcome is gathered, rank 0 adds evaluation, environment and the
    machine's peak (each called on rank 0 only) and writes result.json. `fed`: what each replica this process fed
    was given (common.data.Fed), read back from its step inputs: result.json's work_split. `stage_devices`: where the
    weights of each stage this process runs live. `strategy_fields`: the records a strategy adds to
    result.json as rank 0 recorded them (common/strategies: e.g. parameter-server's `asynchrony`)."""

    def rank0_extras() -> dict:
        env = framework.environment(ctx)
        extras = {"eval": evaluate(), "env": env, "peak_flops": framework.peak_flops(ctx.run)}
        return extras | (strategy_fields or {})

    outcome = RankOutcome(
        losses,
        timing,
        weight_copies,
        peak_rss_bytes(),
        stage,
        stage_busy_s or {},
        fed or [],
        stage_devices or {},
        framework.gpu_memory(),
    )
    finish_run(ctx.run, outcome, ctx.gather, ctx.rank, rank0_extras)


def report_networks(
    ctx: RankContext,
    outcomes: list[NetworkOutcome],
    framework: FrameworkEnd,
    exchange: dict | None = None,
    ensemble: bool = False,
) -> None:
    """The end of a multi-network run (common.networks.finish_networks); `exchange`: what collaborating networks
    exchange per step, recorded next to the environment."""

    def rank0_extras() -> dict:
        on = dataclasses.replace(ctx, devices=tuple(sorted({o.device for o in outcomes})))
        return ({} if exchange is None else {"exchange": exchange}) | {"env": framework.environment(on)}

    finish_networks(ctx.run, outcomes, ctx.gather, ctx.rank, rank0_extras, framework.gpu_memory(), ensemble=ensemble)
