"""`xfw study`: a grid of matched comparisons (workloads x swept config keys x seeds), each cell run through the
same machinery as `xfw compare`, each cell's measurements written atomically when it finishes, so that a study
stopped anywhere can be finished with --resume. The statistics and outputs are in study_report.py.

    STUDY.yaml -> StudySpec -> cells (workload x axis point; resolved configs, checked before anything runs)
    each cell:  for each seed and strategy, compare_strategy(...)  -> StudyCell (cells/<key>/cell.json)
    all cells:  study_report.write_outputs -> study.csv, study.json, study.md, plots"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xfw.common.errors import UserError
from xfw.common.execute import runner
from xfw.common.execute.executor import Executor, Progress
from xfw.common.execute.orchestrate import check_compare, compare_strategy, run_devices
from xfw.common.execute.outdir import OutputError
from xfw.common.plan.machine import Machine
from xfw.common.plan.refusals import unavailable_reason
from xfw.common.plan.registry import get_strategy
from xfw.common.records import Real, Record, RunResult, Timing, first_problem, read_result
from xfw.common.spec.config import Config, apply_overrides, build_config, load_raw, set_key
from xfw.common.worker.loop import write_json_atomic

STUDY_FILE = "study-spec.json"  # what the folder's cells were measured for: --resume checks it
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetSpec(_Strict):
    """A value to reach: the training loss (trailing mean over `smoothing` steps) or a test metric (measured once,
    after the last step, so it is reached at the end of training or not at all)."""

    metric: str = "train_loss"  # train_loss, or a test metric the runs report: test_loss, test_accuracy
    below: float | None = None
    above: float | None = None
    smoothing: Annotated[int, Field(ge=1)] = 10

    @model_validator(mode="after")
    def _one_direction(self) -> TargetSpec:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of below or above")
        return self

    @property
    def value(self) -> float:
        if self.below is not None:
            return self.below
        assert self.above is not None  # _one_direction: exactly one of below and above
        return self.above

    def describe(self) -> str:
        return f"{self.metric} {'<=' if self.below is not None else '>='} {self.value:g}"


class EquivalenceSpec(_Strict):
    """Two implementations converge equivalently when their final `metric` differs by less than `margin` (absolute),
    shown by two one-sided tests at `alpha` over the seeds."""

    metric: str = "final_train_loss"  # final_train_loss (mean over the last `smoothing` steps), test_loss, ...
    margin: Annotated[float, Field(gt=0)] = 0.01
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    smoothing: Annotated[int, Field(ge=1)] = 10


Axes = dict[str, Annotated[list[Any], Field(min_length=1)]]


class WorkloadSpec(_Strict):
    name: Annotated[str, Field(pattern=NAME)]
    config: str | None = None  # a run config, relative to the study file (default: configs/default.yaml)
    set: list[str] = []  # KEY=VALUE overrides, as `--set`
    axes: Axes = {}  # beside (and over) the study's axes
    target: TargetSpec | None = None  # over the study's
    equivalence: EquivalenceSpec | None = None  # over the study's


class StudySpec(_Strict):
    name: Annotated[str, Field(pattern=NAME)]
    workloads: Annotated[list[WorkloadSpec], Field(min_length=1)]
    axes: Axes = {}
    strategies: Annotated[list[str], Field(min_length=1)] = ["mirrored"]
    implementations: list[str] = []  # run ids (torch-ddp, ...); empty: every implementation of the strategies
    repeats: Annotated[int, Field(ge=1)] = 1  # processes per implementation, seed and cell
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    target: TargetSpec | None = None
    equivalence: EquivalenceSpec = EquivalenceSpec()
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    timeout_s: Annotated[float, Field(gt=0)] | None = None  # per run; default: each config's runtime.timeout_s
    needs_gpus: Annotated[int, Field(ge=0)] = 0  # refused on a machine with fewer

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        names = [w.name for w in self.workloads]
        if len(set(names)) != len(names):
            raise ValueError(f"workload names must differ (got {', '.join(names)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must differ")
        if self.repeats * len(self.seeds) < 2:
            raise ValueError(
                "a noise floor needs every implementation measured in two processes at least: "
                "set repeats >= 2 or give two seeds"
            )
        return self


# ---- cells ------------------------------------------------------------------------------------------------


class Cell(BaseModel):
    """One workload at one point of its grid: the config each of its seeds trains with."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    key: str  # folder name under cells/
    workload: str
    point: dict[str, Any]
    configs: dict[int, Config]  # seed -> config
    target: TargetSpec | None
    equivalence: EquivalenceSpec

    @property
    def label(self) -> str:
        where = ", ".join(f"{k}={_show(v)}" for k, v in self.point.items())
        return f"{self.workload}[{where}]" if where else self.workload


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_study(path: str | Path) -> StudySpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read study {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"malformed YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"study {path} must be a mapping at the top level")
    try:
        return StudySpec.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "extra_forbidden":
            where = ".".join(str(p) for p in first["loc"])
            raise UserError(f"study {path}: unknown key '{where}'") from None
        raise UserError(f"study {path}: {first_problem(err).removeprefix('Value error, ')}") from None


def expand_cells(spec: StudySpec, study_path: Path) -> list[Cell]:
    """Every workload x axis point, each seed's config validated; bad input named with its cell."""
    cells = []
    for workload in spec.workloads:
        axes = {**spec.axes, **workload.axes}
        if "seed" in axes:
            raise UserError(f"study {study_path}: 'seed' is not an axis: list the seeds under 'seeds'")
        config_path = (study_path.parent / workload.config) if workload.config else None
        try:
            base = apply_overrides(load_raw(config_path), list(workload.set))
        except UserError as err:
            raise UserError(f"study {study_path}: workload {workload.name}: {err}") from None
        if isinstance(base.get("training", {}), dict):
            # Time to target counts warm-up, where xfw profiles (training.profile_steps) at a cost that differs by
            # framework (TensorFlow's profiler: ~0.15 s per run here): a study profiles only where a config asks.
            base.setdefault("training", {}).setdefault("profile_steps", 0)
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values))
            cell = Cell(
                key="",
                workload=workload.name,
                point=point,
                configs={},
                target=workload.target or spec.target,
                equivalence=workload.equivalence or spec.equivalence,
            )
            for seed in spec.seeds:
                raw = copy.deepcopy(base)
                try:
                    for key, value in point.items():
                        set_key(raw, key.split("."), value, f"axis {key}")
                    raw["seed"] = seed
                    cell.configs[seed] = build_config(raw)
                except UserError as err:
                    raise UserError(f"study {study_path}: cell {cell.label}: {err}") from None
            cell.key = _cell_key(cell)
            cells.append(cell)
    return cells


def _cell_key(cell: Cell) -> str:
    """A folder name that stays the cell's whatever the grid's order: workload + hash of its configs."""
    digest = hashlib.sha256(
        json.dumps({s: c.model_dump(mode="json") for s, c in cell.configs.items()}, sort_keys=True).encode()
    ).hexdigest()[:10]
    return f"{cell.workload}-{digest}"


def study_identity(spec: StudySpec, cells: list[Cell]) -> str:
    """What the measurements depend on (not the target, margin or confidence: those only change the analysis,
    so a finished study can be re-read with other ones through --resume)."""
    what = {
        "name": spec.name,
        "strategies": spec.strategies,
        "implementations": spec.implementations,
        "repeats": spec.repeats,
        "timeout_s": spec.timeout_s,
        "cells": [c.key for c in cells],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def implementations_by_strategy(spec: StudySpec) -> dict[str, list[str]]:
    """strategy -> the `only` list of its compare ([]: all); each named implementation must belong to one."""
    from xfw.common.plan.registry import for_strategy

    owners = {}
    for strategy in spec.strategies:
        kind = get_strategy(strategy)  # unknown strategy: UserError
        if kind.several_networks:
            raise UserError(
                f"strategy {strategy} trains several networks: compare it with `xfw compare --strategy {strategy}`; "
                "a study compares one-network strategies"
            )
        for impl in for_strategy(strategy):
            owners[impl.id] = strategy
    unknown = [i for i in spec.implementations if i not in owners]
    if unknown:
        raise UserError(
            f"implementations: {', '.join(unknown)} not in the strategies {', '.join(spec.strategies)} "
            f"(expected some of: {', '.join(owners)})"
        )
    return {s: [i for i in spec.implementations if owners[i] == s] for s in spec.strategies}


def check_cells(spec: StudySpec, cells: list[Cell], machine: Machine) -> dict[str, int]:
    """Refuse, before anything runs, what a cell's compare would refuse; cell key -> the runs it will start (for
    the progress display)."""
    if machine.gpus < spec.needs_gpus:
        raise UserError(
            f"study {spec.name} needs {spec.needs_gpus} GPU(s) (needs_gpus); this machine has {machine.gpus}"
        )
    only = implementations_by_strategy(spec)
    runs = {}
    for cell in cells:
        runs[cell.key] = 0
        for config in cell.configs.values():
            for strategy in spec.strategies:
                try:
                    impls = check_compare(strategy, config, machine, only[strategy])
                except UserError as err:
                    raise UserError(f"cell {cell.label}, strategy {strategy}: {err}") from None
                available = [i for i in impls if unavailable_reason(i, machine, run_devices(i, config), config) is None]
                runs[cell.key] += len(available) * spec.repeats
    return runs


# ---- what a cell measured (cells/<key>/cell.json) ----------------------------------------------------------


class StudyProcess(Record):
    """One process tree: one repeat of one implementation for one seed."""

    implementation: str  # run id, e.g. torch-ddp
    framework: str
    strategy: str
    reference: str | None  # the run id of its single-device reference (None: it is one)
    seed: int
    process: int  # 0, 1, ...: this implementation's processes for this seed, in the order they ran
    replicas: int
    devices: int
    global_batch: int
    window_rates: list[float]  # samples/s of each timed window
    throughput_samples_per_s: float  # median of window_rates
    timing: Timing
    loss: list[Real]
    eval: dict[str, Real]
    peak_memory_bytes: int
    device_peak_bytes: int | None = None
    diverged_at_step: int | None = None
    result_file: str


class StudyParity(Record):
    """A matched pair of the cell's compares (xfw compare's comparisons): were they at parity?"""

    seed: int
    a: str
    b: str
    kind: str
    within_tolerance: bool | None
    max_rel_loss_diff: Real | None
    note: str | None = None


class StudyCell(Record):
    key: str
    workload: str
    point: dict[str, Any]
    status: Literal["ok", "failed"]
    errors: list[str] = []  # failed: each run that failed and why (its first line)
    skipped: dict[str, str] = {}  # run id -> why it cannot run here
    processes: list[StudyProcess] = []
    parity: list[StudyParity] = []
    wall_s: float
    finished: str


def process_record(result: RunResult, entry, seed: int, process: int, path: Path) -> StudyProcess:
    from xfw.common.judge.compare import window_rates
    from xfw.common.plan.registry import find

    impl = find(result.framework, result.implementation)
    rates = window_rates(result.timing.global_batch, result.timing.windows)
    reference = find(impl.framework, impl.reference).id if impl.reference and impl.reference != impl.name else None
    return StudyProcess(
        implementation=entry.id,
        framework=result.framework,
        strategy=result.strategy,
        reference=reference,
        seed=seed,
        process=process,
        replicas=result.replicas,
        devices=result.devices,
        global_batch=result.timing.global_batch,
        window_rates=[float(r) for r in rates],
        throughput_samples_per_s=float(np.median(rates)),
        timing=result.timing,
        loss=result.loss,
        eval=result.eval,
        peak_memory_bytes=result.peak_memory_bytes,
        device_peak_bytes=result.device_memory.peak_bytes if result.device_memory else None,
        diverged_at_step=result.diverged_at_step,
        result_file=str(path),
    )


def run_cell(
    spec: StudySpec, cell: Cell, out: Path, executor: Executor[Any], progress: Progress
) -> tuple[StudyCell | None, str | None]:
    """Run every seed and strategy of the cell; (the cell's record, None) or (None, why it stopped: a signal)."""
    started = time.monotonic()
    only = implementations_by_strategy(spec)
    record = StudyCell(key=cell.key, workload=cell.workload, point=cell.point, status="ok", wall_s=0.0, finished="")
    counts: dict[tuple[str, int], int] = {}
    for seed, config in cell.configs.items():
        for strategy in spec.strategies:
            where = out / "cells" / cell.key / f"seed-{seed}" / strategy
            try:
                summary = compare_strategy(
                    strategy,
                    config,
                    where,
                    spec.repeats,
                    spec.timeout_s or config.runtime.timeout_s,
                    executor,
                    progress,
                    only[strategy],
                )
            except (OutputError, OSError) as exc:  # the disk filled up: this cell fails, the study goes on
                record.errors.append(f"seed {seed}, {strategy}: cannot write {where}: {exc}")
                continue
            if summary.interrupted:
                return None, summary.interrupted
            _collect(record, summary, seed, counts)
    record.status = "failed" if record.errors else "ok"
    record.wall_s = time.monotonic() - started
    record.finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return record, None


def _collect(record: StudyCell, summary, seed: int, counts: dict) -> None:
    for entry in summary.runs:
        if entry.status == "skipped":
            record.skipped[entry.id] = entry.reason
        elif entry.status in ("failed", "interrupted"):
            why = entry.error if entry.status == "failed" else entry.reason
            record.errors.append(f"seed {seed}, {entry.id}: {why.splitlines()[0]}")
        if entry.status != "ok":
            continue
        for file in entry.result_files:
            path = Path(file)
            try:
                result = read_result(json.loads(path.read_text()))
            except (OSError, ValueError, ValidationError) as exc:
                record.errors.append(f"seed {seed}, {entry.id}: {path} unreadable: {first_problem(exc)}")
                continue
            n = counts.get((entry.id, seed), 0)
            counts[(entry.id, seed)] = n + 1
            assert isinstance(result, RunResult)  # a study refuses the strategies that train several networks
            record.processes.append(process_record(result, entry, seed, n, path))
    for c in summary.comparisons:
        if c.status == "ok":
            record.parity.append(
                StudyParity(
                    seed=seed,
                    a=c.a,
                    b=c.b,
                    kind=c.kind,
                    within_tolerance=c.within_tolerance,
                    max_rel_loss_diff=c.max_rel_loss_diff,
                    note=c.note,
                )
            )


def cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.key / "cell.json"


def read_cell(out: Path, cell: Cell) -> StudyCell | None:
    """The cell's finished record, or None (never run, interrupted, or written by something else)."""
    try:
        return StudyCell.model_validate_json(cell_path(out, cell).read_text())
    except (OSError, ValueError):
        return None


def claim_study(out: Path, spec: StudySpec, identity: str, study_path: Path, resume: bool) -> None:
    """Mark the folder as this study's; refuse a folder of another study, and a finished or started one without
    --resume (its cells would be mixed with new ones)."""
    marker = out / STUDY_FILE
    if marker.exists():
        try:
            held = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise UserError(f"--out {out}: {STUDY_FILE} there is unreadable; use another folder") from None
        if held.get("identity") != identity:
            raise UserError(
                f"--out {out} holds another study ({held.get('name')!r} from {held.get('file')}: its grid, "
                "strategies, implementations, repeats or seeds differ); use another --out"
            )
        if not resume:
            raise UserError(f"--out {out} already holds this study: add --resume to finish it, or use another --out")
        return
    if resume and (out / "cells").exists():
        raise UserError(f"--out {out}: cells there but no {STUDY_FILE}: not a study folder xfw can resume")
    if not resume and any(p.name != ".xfw.lock" for p in out.iterdir()):
        raise UserError(f"--out {out} is not empty: use an empty or new folder")
    write_json_atomic(marker, {"name": spec.name, "file": str(study_path), "identity": identity})


def run_study(
    spec: StudySpec,
    cells: list[Cell],
    out: Path,
    executor: Executor[Any],
    progress,
    planned: dict[str, int],
    on_cell=None,
) -> tuple[list[StudyCell], str | None]:
    """Run the cells without a finished record (missing or failed); returns every finished record, in grid order,
    and why the study stopped early (a signal), if it did. `on_cell(records)`: after each cell."""
    # A failed cell's record stays in the outputs until its rerun replaces it.
    records = {c.key: r for c in cells if (r := read_cell(out, c)) is not None}
    todo = [c for c in cells if c.key not in records or records[c.key].status != "ok"]
    progress.cells(len(cells), len(cells) - len(todo), sum(planned[c.key] for c in todo))
    for cell in todo:
        if (signum := runner.interrupted()) is not None:
            return _ordered(cells, records), f"{runner.interruption(signum)} before cell {cell.label}"
        progress.cell(cell.label)
        record, stopped = run_cell(spec, cell, out, executor, progress)
        if stopped:
            return _ordered(cells, records), f"{stopped} (cell {cell.label})"
        assert record is not None  # run_cell: a record, or why it stopped
        write_json_atomic(cell_path(out, cell), record.to_json())
        records[cell.key] = record
        progress.cell_done(cell.label, record.status, record.errors)
        if on_cell:
            on_cell(_ordered(cells, records))
    return _ordered(cells, records), None


def _ordered(cells: list[Cell], records: dict[str, StudyCell]) -> list[StudyCell]:
    return [records[c.key] for c in cells if c.key in records]
