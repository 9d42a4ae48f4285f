"""Runs implementations, each in its own process tree through its launcher, and assembles summary.json.

summary.json is rewritten (atomically) after every run, so a failure later on, even of xfw itself,
never loses the runs that finished."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xfw.common.errors import UserError
from xfw.common.execute import hosts as virtual_hosts
from xfw.common.execute import runner
from xfw.common.execute.executor import Executor, FailureKind, NoProgress, Progress, RunFailure, execute
from xfw.common.execute.outdir import OutputFolder
from xfw.common.judge.compare import comparisons, envelopes, run_entry
from xfw.common.judge.compare_networks import network_run_entry, sweep
from xfw.common.plan.machine import Machine
from xfw.common.plan.refusals import check_devices, oversubscription, unavailable_reason
from xfw.common.plan.registry import REGISTRY, for_strategy, get_strategy, run_devices
from xfw.common.plan.runspec import RunSpec
from xfw.common.records import (
    AnyRun,
    FailedRun,
    InterruptedRun,
    MachineInfo,
    RunBase,
    SkippedRun,
    Summary,
)
from xfw.common.spec.config import Config, config_for_replicas, with_hidden_width
from xfw.common.spec.data import load_dataset, loss_floor
from xfw.common.spec.partition import check_micro_batches, plan_stages
from xfw.common.strategies.base import Framework, Implementation
from xfw.common.worker.loop import write_json_atomic
from xfw.common.worker.networks import check_networks


def preflight(config: Config, strategy: str) -> None:
    """Check what the config alone cannot: the dataset exists and fits the model, the split into stages
    exists, micro-batches divide the batch. In the parent, so that bad input is a one-line error here
    rather than a crash in every worker."""
    kind = get_strategy(strategy)
    refusal = kind.refusal(config)
    if refusal:
        raise UserError(refusal)
    if config.training.per_replica_batch is not None:
        if kind.several_networks or kind.staged:
            raise UserError("training.per_replica_batch (weak scaling) applies to single-device and data-parallel runs")
        config = config_for_replicas(config, config.parallel.replicas if kind.data_parallel else 1)
    load_dataset(config)
    if kind.several_networks:
        check_networks(config, strategy)
        for cfg in sized_configs(config, strategy).values():
            check_networks(cfg, strategy)
    if kind.staged:
        if config.model_parallel.stages < 2:
            raise UserError(f"strategy {strategy} needs model_parallel.stages of at least 2")
        plan_stages(config)
    check_hosts(config, kind)
    batch, micro = config.training.global_batch, config.model_parallel.micro_batches
    if kind.micro_batched and kind.data_parallel:
        check_micro_batches(batch // config.parallel.replicas, micro, "each replica's batch (global_batch / replicas)")
    elif kind.micro_batched:
        check_micro_batches(batch, micro, "training.global_batch")


def check_hosts(config: Config, kind) -> None:
    """network.hosts > 1: namespaces can be made here, the processes split evenly over the hosts, and the machine has
    a core per host (or parallel.oversubscribe)."""
    hosts = config.network.hosts
    if hosts == 1:
        if config.network.rate is not None:
            raise UserError("network.rate limits the links between hosts; it needs network.hosts of 2 or more")
        return
    why = virtual_hosts.unavailable()
    if why:
        raise UserError(f"network.hosts {hosts}: {why}")
    if kind.several_networks or kind.staged:
        raise UserError(f"network.hosts applies to single-device and data-parallel strategies, not {kind.name}")
    replicas = config.parallel.replicas
    if replicas % hosts:
        raise UserError(f"network.hosts {hosts} does not divide the {replicas} replicas (processes) evenly")
    cores = os.cpu_count() or 1
    if hosts > cores and not config.parallel.oversubscribe:
        raise UserError(
            f"network.hosts {hosts} is more hosts than this machine's {cores} cores hold without oversubscription "
            "(set parallel.oversubscribe=true to run anyway; timings are then meaningless)"
        )


def sized_configs(config: Config, strategy: str) -> dict[int | None, Config]:
    """Sweep point -> config: the strategy's size sweep (shared_device.hidden_widths: every implementation at
    every hidden width), or {None: the config as it is}."""
    kind = get_strategy(strategy)
    widths = config.shared_device.hidden_widths if kind.sweep == "shared_device.hidden_widths" else []
    return {w: with_hidden_width(config, w) for w in widths} or {None: config}


def base_entry(impl: Implementation) -> RunBase:
    return RunBase(
        id=impl.id,
        framework=impl.framework,
        strategy=impl.strategy,
        implementation=impl.name,
        launcher=impl.launcher,
        description=impl.description,
    )


@dataclass
class Slot:
    """One implementation at one sweep point, collecting its repeats."""

    impl: Implementation
    config: Config
    base: RunBase
    results: list = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    entry: AnyRun | None = None  # None until its first repeat ends; then ok (so far), failed or skipped

    @property
    def open(self) -> bool:
        return self.entry is None or self.entry.status == "ok"


def make_slot(
    impl: Implementation,
    config: Config,
    machine: Machine,
    progress: Progress,
    width: int | None,
    perturbation: str | None = None,
) -> Slot:
    """`width`: the shared-device sweep point (config already resized); `perturbation` "ulp": the rounding
    envelope's run of `impl` (RunSpec.perturbation). Skipped here if it cannot run."""
    base = base_entry(impl).model_copy(update={"oversubscribed": oversubscription(impl, machine, config) is not None})
    if width is not None:
        base = base.model_copy(update={"id": f"{impl.id}@h{width}", "size": {"hidden_width": width}})
    if perturbation is not None:
        base = base.model_copy(update={"id": f"{base.id}~{perturbation}", "perturbation": perturbation})
    # weak scaling: each run's global batch is its replicas x training.per_replica_batch
    slot = Slot(impl, config_for_replicas(config, run_replicas(impl, config)), base)
    reason = unavailable_reason(impl, machine, run_devices(impl, config), config)
    if reason:
        progress.finish(base.id, "skipped", reason)
        slot.entry = SkippedRun(**base.model_dump(), reason=reason)
    return slot


def run_repeat(
    slot: Slot, k: int, repeats: int, out_dir: Path, timeout_s: float, executor: Executor[Any], progress: Progress
) -> None:
    """Repeat k of the slot's implementation; its entry becomes the merge of the repeats so far, or failed."""
    impl, label = slot.impl, slot.base.id
    run = RunSpec(
        slot.config,
        impl.framework,
        impl.strategy,
        impl.name,
        str(out_dir / "runs" / label / f"repeat-{k}"),
        perturbation=slot.base.perturbation,
    )
    shown = label + (f" (repeat {k + 1}/{repeats})" if repeats > 1 else "")
    progress.start(shown, slot.config.training.steps)
    result = execute(executor, impl, run, timeout_s, progress)
    if isinstance(result, RunFailure) and result.kind == FailureKind.INTERRUPTED:
        progress.finish(shown, "interrupted", result.error)
        if not slot.results:  # repeats that finished before it stay a result
            slot.entry = InterruptedRun(**slot.base.model_dump(), reason=result.error, run_dir=run.out_dir)
        return
    if isinstance(result, RunFailure):
        progress.finish(shown, "failed", result.error.splitlines()[0])
        slot.entry = FailedRun(**slot.base.model_dump(), error=result.error, run_dir=run.out_dir)
        return
    slot.results.append(result)
    slot.files.append(str(Path(run.out_dir) / "result.json"))
    merge = network_run_entry if impl.kind.several_networks else run_entry
    slot.entry = merge(slot.base, slot.results)
    slot.entry.result_files = list(slot.files)
    combined = " combined" if impl.kind.several_networks else ""
    progress.finish(shown, "ok", f"{slot.entry.throughput_samples_per_s:,.0f} samples/s{combined}")


def implementations_for(strategy: str, only: Sequence[str] = ()) -> list[Implementation]:
    """The strategy's implementations (or those of them named in `only`) plus, for the one-network
    strategies, the single-device references they are diffed against, in each framework; TF first. (A
    multi-network strategy's references are among its own implementations.)"""
    wanted = for_strategy(strategy)
    if only:
        unknown = sorted(set(only) - {i.id for i in wanted})
        if unknown:
            raise UserError(
                f"--only {', '.join(unknown)}: not an implementation of {strategy} (expected: "
                f"{', '.join(i.id for i in wanted)})"
            )
        wanted = [i for i in wanted if i.id in only]
    ref = get_strategy(strategy).reference_strategy
    named = {i.reference for i in wanted}
    references = [i for i in REGISTRY if ref is not None and i.strategy == ref and i.name in named and i not in wanted]
    return sorted(references + wanted, key=lambda i: (i.strategy != ref, i.framework != Framework.TF))


def check_compare(strategy: str, config: Config, machine: Machine, only: Sequence[str] = ()) -> list[Implementation]:
    """Everything a compare refuses before it starts anything (one-line UserErrors); the implementations it runs."""
    impls = implementations_for(strategy, only)
    preflight(config, strategy)
    for impl in impls:
        if unavailable_reason(impl, machine, run_devices(impl, config), config) is None:
            check_devices(impl, machine, config)
    return impls


def compare_strategy(
    strategy: str,
    config: Config,
    out_dir: Path,
    repeats: int,
    timeout_s: float,
    executor: Executor[Any],
    progress: Progress | None = None,
    only: Sequence[str] = (),
    folder: OutputFolder | None = None,
) -> Summary:
    """Every run of the compare through `executor` (whose resources the refusals read). `folder`: the claimed
    output folder (common/execute/outdir.py), whose reserve keeps summary.json writable on a full disk; an
    OutputError if summary.json cannot be written even so."""
    progress = progress or NoProgress()
    machine = executor.resources
    impls = check_compare(strategy, config, machine, only)
    sized = sized_configs(config, strategy)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary(
        strategy=strategy,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        repeats=repeats,
        timeout_s=timeout_s,
        machine=MachineInfo(cpu_cores=machine.cpu_cores, gpus=machine.gpus),
        config=config.model_dump(mode="json"),
        loss_floor=loss_floor(config),
    )
    slots = [make_slot(impl, cfg, machine, progress, width) for width, cfg in sized.items() for impl in impls]
    if config.parity.envelope_factor is not None and not get_strategy(strategy).several_networks:
        # The rounding envelope: each framework's single-device custom loop once more, from weights moved one ulp.
        one_device = get_strategy(strategy).reference_strategy or strategy
        references = [i for i in impls if i.strategy == one_device and not i.keras_fit]
        slots += [make_slot(i, config, machine, progress, None, perturbation="ulp") for i in references]

    def publish() -> None:
        summary.runs = [slot.entry for slot in slots if slot.entry is not None]
        summary.comparisons = comparisons(summary.runs, config)
        if config.parity.envelope_factor is not None:
            summary.envelopes = {fw: curve.tolist() for fw, curve in envelopes(summary.runs).items()}
        if get_strategy(strategy).sweep:
            summary.sweep = sweep(summary.comparisons)
        if folder is None:
            write_json_atomic(out_dir / "summary.json", summary.to_json())
        else:
            folder.write_json(out_dir / "summary.json", summary.to_json())

    publish()
    # Round robin: every implementation's repeat k before any repeat k+1, so that a stretch of background load
    # falls on several implementations' repeats rather than on all of one implementation's.
    for k in range(repeats):
        for slot in slots:
            if runner.interrupted() is not None:
                break
            if slot.open and not (folder and folder.full):
                run_repeat(slot, k, repeats, out_dir, timeout_s, executor, progress)
                if (signum := runner.interrupted()) is not None:
                    shown = slot.base.id + (f" repeat {k + 1}/{repeats}" if repeats > 1 else "")
                    summary.interrupted = f"{runner.interruption(signum)} during {shown}"
                publish()
    if folder and folder.full:  # the disk is full: the runs not started yet could not write anything either
        for slot in slots:
            if slot.entry is None:
                progress.finish(slot.base.id, "failed", f"not run: {folder.full}")
                slot.entry = FailedRun(**slot.base.model_dump(), error=f"not run: {folder.full}")
        publish()
    # Between runs, or before the first.
    if (signum := runner.interrupted()) is not None and summary.interrupted is None:
        summary.interrupted = f"{runner.interruption(signum)} before every run had started"
        publish()
    return summary


def run_replicas(impl, config: Config) -> int:
    """Data-parallel replicas one run of `impl` has: parallel.replicas for a data-parallel strategy, else 1."""
    return config.parallel.replicas if impl.kind.data_parallel else 1
