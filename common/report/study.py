"""A study's statistics and outputs, rebuilt from its cells' records (study.py) alone, so that an interrupted and
resumed study, or a finished one re-read with another target, gives the report its cells say.

    StudyCell records -> CellStats (per implementation, every pair, the decision) -> study.json
                                                                                   -> study.csv (one row per process)
                                                                                   -> study.md + plots"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from xfw.common.judge.stats import compare_throughput, first_reach, noise_floor, smoothed, step_end_times, tost_paired
from xfw.common.records import Real, Record
from xfw.common.report.comparison import save_figure, write_atomically
from xfw.common.strategies.base import FRAMEWORK_NAMES
from xfw.common.study.grid import Cell, EquivalenceSpec, StudyCell, StudyProcess, StudySpec, TargetSpec, _show


class Reach(Record):
    """When one process reached the target (None: not within its steps)."""

    steps: int | None
    seconds: Real | None


class ImplementationStats(Record):
    implementation: str
    framework: str
    strategy: str
    reference: str | None
    replicas: int
    devices: int
    processes: int
    seeds: int
    throughput_samples_per_s: Real  # median over the timing windows of all its processes
    process_medians: list[Real]  # each process's median: the run-to-run spread
    process_spread: Real | None  # max / min - 1 of process_medians: this implementation's noise floor
    scaling_efficiency: Real | None  # throughput / (devices x its one-device reference's), same cell
    final_metric: str
    final_metric_mean: Real | None
    final_metric_std: Real | None  # over seeds (population std; 0 with one seed)
    target: str | None
    target_reached: int  # processes that reached it
    seconds_to_target: Real | None  # median over the processes that reached it
    seconds_to_target_range: list[Real] | None  # [min, max] over them
    steps_to_target: int | None
    peak_memory_bytes: int  # median over processes (largest process's resident set)
    device_peak_bytes: int | None


class PairStats(Record):
    """a against b, a being the one with the higher median throughput."""

    a: str
    b: str
    ratio: Real
    ci_low: Real
    ci_high: Real
    confidence: Real
    noise_floor: Real | None
    verdict: str  # "faster" (a than b) or "no clear difference"
    metric: str
    margin: Real
    seeds: int
    mean_metric_difference: Real | None  # a - b
    equivalence_p: Real | None
    equivalent: bool | None  # None: not tested
    equivalence_method: str
    # The share of one's loss curve (trailing means over equivalence.smoothing steps, every seed) inside the other's
    # band over seeds; None: the other ran fewer than two seeds. How asynchronous training, which no seed reproduces
    # step for step, is held against synchronous training's spread.
    a_within_b_band: Real | None = None
    b_within_a_band: Real | None = None


class CellStats(Record):
    key: str
    workload: str
    label: str
    point: dict[str, Any]
    status: str
    errors: list[str]
    skipped: dict[str, str]
    noise_floor: Real | None  # the largest of its implementations' process-to-process changes (None: none ran twice)
    implementations: list[ImplementationStats]
    pairs: list[PairStats]
    decision: dict[str, str]  # framework -> the fastest of the study's strategies' implementations
    decision_pair: PairStats | None  # the two frameworks' fastest, against each other
    parity_failures: list[str]
    sentence: str


class StudyReport(Record):
    xfw_study_version: int = 1
    name: str
    file: str
    identity: str
    machine: dict[str, int]
    axes: list[str]
    strategies: list[str]
    seeds: list[int]
    repeats: int
    confidence: Real
    cells_total: int
    cells_done: int
    cells_failed: int
    cells: list[CellStats]
    recommendations: dict[str, str]  # workload -> the paragraph
    stopped: str | None = None  # why the study stopped before every cell was done


# ---- per-process measures --------------------------------------------------------------------------------


def final_metric(p: StudyProcess, eq: EquivalenceSpec) -> float | None:
    if eq.metric == "final_train_loss":
        return float(np.mean(p.loss[-eq.smoothing :]))
    return p.eval.get(eq.metric)


def reach(p: StudyProcess, target: TargetSpec) -> Reach:
    ends = step_end_times(p.timing.warmup_steps, p.timing.warmup_s, [(w.steps, w.seconds) for w in p.timing.windows])
    below = target.below is not None
    if target.metric == "train_loss":
        index = first_reach(smoothed(np.array(p.loss), target.smoothing), target.value, below)
    else:  # a test metric is measured once, after the last step
        value = p.eval.get(target.metric)
        index = len(p.loss) - 1 if value is not None and first_reach([value], target.value, below) == 0 else None
    if index is None:
        return Reach(steps=None, seconds=None)
    return Reach(steps=index + 1, seconds=float(ends[min(index, len(ends) - 1)]))


# ---- a cell's statistics ------------------------------------------------------------------------------------


def implementation_stats(procs: list[StudyProcess], cell: Cell, reference_median: float | None) -> ImplementationStats:
    first = procs[0]
    eq, target = cell.equivalence, cell.target
    rates = np.concatenate([p.window_rates for p in procs])
    median = float(np.median(rates))
    by_seed = metric_by_seed(procs, eq)
    values = [v for v in by_seed.values() if v is not None]
    reaches = [reach(p, target) for p in procs] if target else []
    hit = [r for r in reaches if r.steps is not None]
    seconds = [r.seconds for r in hit if r.seconds is not None]  # all of them: reach() sets both or neither
    return ImplementationStats(
        implementation=first.implementation,
        framework=first.framework,
        strategy=first.strategy,
        reference=first.reference,
        replicas=first.replicas,
        devices=first.devices,
        processes=len(procs),
        seeds=len({p.seed for p in procs}),
        throughput_samples_per_s=median,
        process_medians=[p.throughput_samples_per_s for p in procs],
        process_spread=noise_floor([[p.throughput_samples_per_s for p in procs]]),
        scaling_efficiency=median / (first.devices * reference_median) if reference_median else None,
        final_metric=eq.metric,
        final_metric_mean=float(np.mean(values)) if values else None,
        final_metric_std=float(np.std(values)) if values else None,
        target=target.describe() if target else None,
        target_reached=len(hit),
        seconds_to_target=float(np.median(seconds)) if seconds else None,
        seconds_to_target_range=[min(seconds), max(seconds)] if seconds else None,
        steps_to_target=int(np.median([r.steps for r in hit])) if hit else None,
        peak_memory_bytes=int(np.median([p.peak_memory_bytes for p in procs])),
        device_peak_bytes=int(np.median([p.device_peak_bytes for p in procs]))
        if all(p.device_peak_bytes is not None for p in procs)
        else None,
    )


def metric_by_seed(procs: list[StudyProcess], eq: EquivalenceSpec) -> dict[int, float | None]:
    """Seed -> the final metric (the mean over that seed's processes: they agree exactly under determinism)."""
    out = {}
    for seed in sorted({p.seed for p in procs}):
        values = [final_metric(p, eq) for p in procs if p.seed == seed]
        # np.mean is reached only when no value is None (the checker cannot follow any()).
        out[seed] = None if any(v is None for v in values) else float(np.mean(values))  # type: ignore[arg-type]
    return out


def band_share(a: list[StudyProcess], b: list[StudyProcess], smoothing: int, tolerance: float) -> float | None:
    """The share of a's steps (each process's trailing-mean curve) that lie within b's band: at each step, from the
    lowest to the highest of b's seeds' trailing means, widened by the relative `tolerance` (the cross-framework
    parity tolerance: a curve equal to one of b's within rounding is on the band's edge wherever that seed is the
    lowest or highest). None where b ran fewer than two seeds or the lengths differ (the first smoothing - 1 steps,
    without a full window, are left out)."""
    seeds = sorted({p.seed for p in b})
    if len(seeds) < 2:
        return None
    band = np.array([smoothed(np.mean([p.loss for p in b if p.seed == s], axis=0), smoothing) for s in seeds])
    curves = np.array([smoothed(np.array(p.loss), smoothing) for p in a])
    if curves.shape[1] != band.shape[1] or curves.shape[1] < smoothing:
        return None
    low, high = band.min(axis=0)[smoothing - 1 :], band.max(axis=0)[smoothing - 1 :]
    low, high = low - tolerance * np.abs(low), high + tolerance * np.abs(high)
    inside = (curves[:, smoothing - 1 :] >= low) & (curves[:, smoothing - 1 :] <= high)
    return float(inside.mean())


def pair_stats(
    a: list[StudyProcess], b: list[StudyProcess], floor: float | None, cell: Cell, confidence: float
) -> PairStats:
    ra, rb = (np.concatenate([p.window_rates for p in procs]) for procs in (a, b))
    if np.median(ra) < np.median(rb):
        a, b, ra, rb = b, a, rb, ra
    est = compare_throughput(ra, rb, floor if floor is not None else 0.0, confidence)
    eq = cell.equivalence
    ma, mb = metric_by_seed(a, eq), metric_by_seed(b, eq)
    some_config = next(iter(cell.configs.values()))
    tolerance = some_config.parity.tolerance("cross_framework", some_config.runtime.precision)
    seeds = [s for s in ma if s in mb and ma[s] is not None and mb[s] is not None]
    test = tost_paired(np.array([ma[s] for s in seeds]), np.array([mb[s] for s in seeds]), eq.margin, eq.alpha)
    if not seeds and (ma or mb):
        method = f"not tested: the runs do not report {eq.metric}"
    else:
        method = test.method
    return PairStats(
        a=a[0].implementation,
        b=b[0].implementation,
        ratio=est.ratio,
        ci_low=est.low,
        ci_high=est.high,
        confidence=confidence,
        noise_floor=floor,
        verdict=est.verdict if floor is not None else "no clear difference",
        metric=eq.metric,
        margin=eq.margin,
        seeds=test.seeds,
        mean_metric_difference=test.mean_difference if seeds else None,
        equivalence_p=test.p_value,
        equivalent=test.equivalent,
        equivalence_method=method,
        a_within_b_band=band_share(a, b, eq.smoothing, tolerance),
        b_within_a_band=band_share(b, a, eq.smoothing, tolerance),
    )


def cell_stats(record: StudyCell, cell: Cell, spec: StudySpec) -> CellStats:
    groups: dict[str, list[StudyProcess]] = {}
    for p in record.processes:
        groups.setdefault(p.implementation, []).append(p)
    medians = {k: float(np.median(np.concatenate([p.window_rates for p in v]))) for k, v in groups.items()}
    impls = [
        implementation_stats(v, cell, medians.get(v[0].reference) if v[0].reference else None) for v in groups.values()
    ]
    floor = noise_floor([[p.throughput_samples_per_s for p in v] for v in groups.values()])
    # Each pair is held to its own floor: the larger process-to-process change of its two implementations.
    pairs = [
        pair_stats(
            groups[x],
            groups[y],
            noise_floor([[p.throughput_samples_per_s for p in groups[i]] for i in (x, y)]),
            cell,
            spec.confidence,
        )
        for x, y in itertools.combinations(groups, 2)
    ]
    # The decision is between the study's strategies' implementations (the single-device references run beside
    # them are shown, and named in the sentence when one device is faster).
    candidates = [s for s in impls if s.strategy in spec.strategies]
    decision = {}
    for fw in FRAMEWORK_NAMES:
        mine = [s for s in candidates if s.framework == fw]
        if mine:
            decision[fw] = max(mine, key=lambda s: s.throughput_samples_per_s).implementation
    decision_pair = None
    if len(decision) == 2:
        x, y = decision.values()
        decision_pair = next(p for p in pairs if {p.a, p.b} == {x, y})
    failures = [
        f"seed {c.seed}: {c.a} vs {c.b} outside tolerance (max rel. diff {c.max_rel_loss_diff:.3g})"
        for c in record.parity
        if c.within_tolerance is False
    ]
    stats = CellStats(
        key=record.key,
        workload=record.workload,
        label=cell.label,
        point=record.point,
        status=record.status,
        errors=record.errors,
        skipped=record.skipped,
        noise_floor=floor,
        implementations=impls,
        pairs=pairs,
        decision=decision,
        decision_pair=decision_pair,
        parity_failures=failures,
        sentence="",
    )
    stats.sentence = cell_sentence(stats, cell)
    return stats


# ---- words -------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def pair_phrase(p: PairStats) -> str:
    ci = f"{p.ratio:.2f}x [{p.ci_low:.2f}, {p.ci_high:.2f}]"
    floor = f"noise floor {_pct(p.noise_floor)}"
    if p.verdict == "faster":
        return f"{p.a} is faster: {ci} {p.b} ({floor})"
    return f"no clear difference between {p.a} and {p.b}: {ci} ({floor})"


def equivalence_phrase(p: PairStats) -> str:
    what = f"{p.metric}, margin {p.margin:g}"
    if p.equivalent is None:
        return f"convergence {p.equivalence_method} ({what})"
    if p.equivalent:
        return f"both converge equivalently ({what}, p={p.equivalence_p:.2g} over {p.seeds} seeds)"
    return (
        f"equivalent convergence NOT shown ({what}, mean difference {p.mean_metric_difference:.3g}, "
        f"p={p.equivalence_p:.2g} over {p.seeds} seeds)"
    )


def target_phrase(s: ImplementationStats, steps: int) -> str:
    if s.target is None:
        return ""
    if s.seconds_to_target is None:
        return f"{s.implementation} does not reach {s.target} within {steps} steps"
    partial = "" if s.target_reached == s.processes else f" ({s.target_reached} of {s.processes} processes)"
    return f"{s.implementation} reaches {s.target} in {s.seconds_to_target:.2f} s (step {s.steps_to_target}){partial}"


def cell_sentence(stats: CellStats, cell: Cell) -> str:
    where = ", ".join(f"{k}={_show(v)}" for k, v in stats.point.items()) or "its config"
    if not stats.implementations:
        return f"At {where}: nothing ran ({'; '.join(stats.errors) or 'every run was skipped'})."
    by_id = {s.implementation: s for s in stats.implementations}
    parts = []
    if stats.decision_pair:
        p = stats.decision_pair
        parts.append(pair_phrase(p))
        parts.append(equivalence_phrase(p))
    elif stats.decision:
        parts.append(f"only {', '.join(stats.decision.values())} ran (no cross-framework decision)")
    steps = cell.configs[next(iter(cell.configs))].training.steps
    reached = [target_phrase(by_id[i], steps) for i in stats.decision.values()]
    parts.extend(r for r in reached if r)
    for impl in stats.decision.values():
        s = by_id[impl]
        ref = by_id.get(s.reference or "")
        if ref and ref.throughput_samples_per_s > s.throughput_samples_per_s:
            parts.append(
                f"one device ({ref.implementation}) is faster than {impl} here (scaling efficiency "
                f"{s.scaling_efficiency:.2f})"
            )
    text = f"At {where}: " + "; ".join(parts) + "."
    if stats.parity_failures:
        text += f" Matched runs disagreed: {'; '.join(stats.parity_failures)}."
    return text


def recommendation(workload: str, cells: list[CellStats]) -> str:
    """The workload's paragraph: a tally of the grid, then each point's sentence."""
    mine = [c for c in cells if c.workload == workload]
    wins: dict[str, int] = {}
    unclear = 0
    for c in mine:
        p = c.decision_pair
        if p is None:
            continue
        if p.verdict == "faster":
            fw = next(s.framework for s in c.implementations if s.implementation == p.a)
            wins[FRAMEWORK_NAMES[fw]] = wins.get(FRAMEWORK_NAMES[fw], 0) + 1
        else:
            unclear += 1
    judged = sum(wins.values()) + unclear
    if judged:
        tally = ", ".join(f"{fw} is faster at {n} of {judged}" for fw, n in sorted(wins.items()))
        head = f"On this machine, for {workload}: {tally + '; ' if tally else ''}no clear difference at {unclear} of "
        head += f"{judged} grid points."
    else:
        head = f"On this machine, for {workload}: no grid point ran both frameworks."
    return " ".join([head, *[c.sentence for c in mine]])


# ---- outputs ---------------------------------------------------------------------------------------------


def build_report(spec: StudySpec, cells: list[Cell], records: list[StudyCell], meta: dict) -> StudyReport:
    by_key = {c.key: c for c in cells}
    stats = [cell_stats(r, by_key[r.key], spec) for r in records]
    axes = list(dict.fromkeys(k for c in cells for k in c.point))
    return StudyReport(
        name=spec.name,
        file=meta["file"],
        identity=meta["identity"],
        machine=meta["machine"],
        axes=axes,
        strategies=spec.strategies,
        seeds=spec.seeds,
        repeats=spec.repeats,
        confidence=spec.confidence,
        cells_total=len(cells),
        cells_done=sum(r.status == "ok" for r in records),
        cells_failed=sum(r.status == "failed" for r in records),
        cells=stats,
        recommendations={w.name: recommendation(w.name, stats) for w in spec.workloads},
        stopped=meta.get("stopped"),
    )


CSV_FIXED = [
    "workload",
    "cell",
    "strategy",
    "implementation",
    "framework",
    "seed",
    "process",
    "status",
    "reason",
    "replicas",
    "devices",
    "global_batch",
    "throughput_samples_per_s",
    "timing_windows",
    "final_train_loss",
    "steps_to_target",
    "seconds_to_target",
    "peak_memory_bytes",
    "device_peak_bytes",
    "diverged_at_step",
]


def csv_rows(report: StudyReport, cells: list[Cell], records: list[StudyCell]) -> tuple[list[str], list[dict]]:
    by_key = {c.key: c for c in cells}
    metrics = sorted({k for r in records for p in r.processes for k in p.eval})
    header = [*CSV_FIXED[:2], *report.axes, *CSV_FIXED[2:], *metrics]
    rows = []
    for r in records:
        cell = by_key[r.key]
        base = {"workload": r.workload, "cell": r.key, **{k: _show(v) for k, v in r.point.items()}}
        for p in r.processes:
            got = reach(p, cell.target) if cell.target else Reach(steps=None, seconds=None)
            rows.append(
                {
                    **base,
                    "strategy": p.strategy,
                    "implementation": p.implementation,
                    "framework": p.framework,
                    "seed": p.seed,
                    "process": p.process,
                    "status": "ok",
                    "replicas": p.replicas,
                    "devices": p.devices,
                    "global_batch": p.global_batch,
                    "throughput_samples_per_s": f"{p.throughput_samples_per_s:.6g}",
                    "timing_windows": len(p.window_rates),
                    "final_train_loss": f"{float(np.mean(p.loss[-cell.equivalence.smoothing :])):.8g}",
                    "steps_to_target": got.steps,
                    "seconds_to_target": None if got.seconds is None else f"{got.seconds:.4f}",
                    "peak_memory_bytes": p.peak_memory_bytes,
                    "device_peak_bytes": p.device_peak_bytes,
                    "diverged_at_step": p.diverged_at_step,
                    **{k: f"{v:.8g}" for k, v in p.eval.items()},
                }
            )
        for impl, why in r.skipped.items():
            rows.append({**base, "implementation": impl, "status": "skipped", "reason": why})
        for error in r.errors:
            rows.append({**base, "status": "failed", "reason": error})
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in header})
    write_atomically(path, lambda tmp: tmp.write_text(buffer.getvalue()))


def write_outputs(spec: StudySpec, cells: list[Cell], records: list[StudyCell], out: Path, meta: dict) -> StudyReport:
    from xfw.common.worker.loop import write_json_atomic

    report = build_report(spec, cells, records, meta)
    write_json_atomic(out / "study.json", report.to_json())
    write_csv(out / "study.csv", *csv_rows(report, cells, records))
    plots = write_plots(report, cells, records, out)
    write_atomically(out / "study.md", lambda tmp: tmp.write_text(markdown(report, plots)))
    return report


# ---- plots -------------------------------------------------------------------------------------------------


def write_plots(report: StudyReport, cells: list[Cell], records: list[StudyCell], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    done = [c for c in report.cells if c.implementations]
    if not done:
        return files
    workloads = list(dict.fromkeys(c.workload for c in done))
    for axis in report.axes:
        swept = [w for w in workloads if any(axis in c.point for c in done if c.workload == w)]
        fig, axs = plt.subplots(1, len(swept), figsize=(5.5 * len(swept), 4), squeeze=False)
        for ax, workload in zip(axs[0], swept):
            _throughput_vs(ax, [c for c in done if c.workload == workload and axis in c.point], axis)
            ax.set_title(workload)
        fig.suptitle(f"Throughput vs {axis} (median; bars: slowest and fastest process)")
        fig.tight_layout()
        name = f"throughput_vs_{axis.replace('.', '_')}.png"
        save_figure(fig, out / name)
        files.append(name)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (workload, impl), points in _series(done, lambda c, s: (c.workload, s.implementation)).items():
        pts = sorted((s.replicas, s.scaling_efficiency) for c, s in points if s.scaling_efficiency is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{workload}: {impl}")
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ax.set(
        xlabel="parallel.replicas", ylabel="scaling efficiency (vs devices x one device)", title="Scaling efficiency"
    )
    if ax.lines[1:]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "scaling_efficiency.png")
    files.append("scaling_efficiency.png")

    by_key = {r.key: r for r in records}
    targets = {c.key: c.target for c in cells}
    n = len(done)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, c in zip(axs.flat, done):
        for p in by_key[c.key].processes:
            if p.seed == report.seeds[0] and p.process == 0:
                ends = step_end_times(
                    p.timing.warmup_steps, p.timing.warmup_s, [(w.steps, w.seconds) for w in p.timing.windows]
                )
                ax.plot(ends[: len(p.loss)], p.loss[: len(ends)], linewidth=1, label=p.implementation)
        target = targets.get(c.key)
        if target and target.metric == "train_loss":
            ax.axhline(target.value, color="black", linestyle=":", linewidth=1, label=target.describe())
        ax.set(xlabel="seconds from the first step", ylabel="training loss", yscale="log", title=c.label)
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    for ax in list(axs.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure(fig, out / "loss_vs_time.png")
    files.append("loss_vs_time.png")

    # One colour per implementation, one marker per workload, samples/s on a log scale: workloads differ by orders
    # of magnitude in throughput.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    impls = list(dict.fromkeys(s.implementation for c in done for s in c.implementations))
    for (workload, impl), points in _series(done, lambda c, s: (c.workload, s.implementation)).items():
        ax.scatter(
            [s.peak_memory_bytes / 2**20 for _, s in points],
            [s.throughput_samples_per_s for _, s in points],
            label=f"{workload}: {impl}",
            marker="os^Dv<>p*"[workloads.index(workload) % 9],
            color=f"C{impls.index(impl) % 10}",
            s=22,
        )
    ax.set(
        xlabel="peak memory, MiB (largest process)",
        ylabel="samples/s",
        yscale="log",
        title="Throughput vs peak memory (colour: implementation, marker: workload)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "throughput_vs_memory.png")
    files.append("throughput_vs_memory.png")
    return files


def _series(cells: list[CellStats], key) -> dict:
    out: dict = {}
    for c in cells:
        for s in c.implementations:
            out.setdefault(key(c, s), []).append((c, s))
    return out


def _throughput_vs(ax, cells: list[CellStats], axis: str) -> None:
    others = [k for k in dict.fromkeys(k for c in cells for k in c.point) if k != axis]
    for (impl, rest), points in _series(
        cells, lambda c, s: (s.implementation, ", ".join(f"{k}={_show(c.point[k])}" for k in others))
    ).items():
        points = sorted(points, key=lambda cs: _axis_order(cs[0].point[axis]))
        xs = [_show(c.point[axis]) for c, _ in points]
        ys = np.array([s.throughput_samples_per_s for _, s in points])
        lo = ys - np.array([min(s.process_medians) for _, s in points])
        hi = np.array([max(s.process_medians) for _, s in points]) - ys
        label = f"{impl} ({rest})" if rest else impl
        ax.errorbar(xs, ys, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], marker="o", capsize=3, label=label)
    ax.set(xlabel=axis, ylabel="samples/s")
    ax.legend(fontsize=6)


def _axis_order(value: Any):
    return (0, value, "") if isinstance(value, int | float) and not isinstance(value, bool) else (1, 0, _show(value))


# ---- study.md ----------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def _secs(s: ImplementationStats) -> str:
    if s.target is None:
        return "-"
    if s.seconds_to_target is None:
        return "not reached"
    assert s.seconds_to_target_range is not None  # set with seconds_to_target (implementation_stats)
    lo, hi = s.seconds_to_target_range
    return (
        f"{s.seconds_to_target:.2f} s [{lo:.2f}-{hi:.2f}] (step {s.steps_to_target}, {s.target_reached}/{s.processes})"
    )


def markdown(report: StudyReport, plots: list[str]) -> str:
    conf = f"{report.confidence:.0%}"
    parts = [
        f"# Study {report.name}",
        f"From `{report.file}` on {report.machine['cpu_cores']} CPU cores and {report.machine['gpus']} GPUs: "
        f"{report.cells_done} of {report.cells_total} cells done, {report.cells_failed} failed; strategies "
        f"{', '.join(report.strategies)}; seeds {', '.join(map(str, report.seeds))}; {report.repeats} process(es) "
        "per implementation and seed.",
    ]
    if report.stopped:
        parts.append(f"**Stopped before the end:** {report.stopped}. `xfw study ... --resume` finishes it.")
    parts.append(
        "## How to read it\n"
        "- **ratio [CI]**: the faster implementation's median samples/s over the slower's (timing windows of all "
        f"their processes pooled), with a {conf} bootstrap confidence interval.\n"
        "- **noise floor** of a pair: the larger change between two processes of the same implementation (same "
        "config, measured apart), of its two implementations: what this machine's run-to-run noise alone can do "
        "to them. A cell's noise floor is the largest over its implementations.\n"
        f"- **verdict**: *faster* only when the {conf} interval excludes 1 AND the ratio exceeds 1 + noise floor; "
        "otherwise *no clear difference*.\n"
        "- **equivalent**: two one-sided t-tests (TOST) on the per-seed differences of the final metric (paired "
        "by seed: the same seed gives both the same data, order and initial weights): *yes* when the difference "
        "is shown to be inside +-margin.\n"
        "- **time to target**: from the first training step (start-up excluded), median over the processes that "
        "reached it, [fastest-slowest]; the training loss is smoothed by a trailing mean."
    )
    for workload, text in report.recommendations.items():
        cells = [c for c in report.cells if c.workload == workload]
        parts.append(f"## {workload}\n\n{text}")
        rows = []
        for c in cells:
            p = c.decision_pair
            by_id = {s.implementation: s for s in c.implementations}
            picks = [by_id[i] for i in c.decision.values()]
            rows.append(
                [
                    ", ".join(f"{k}={_show(v)}" for k, v in c.point.items()) or "-",
                    " / ".join(f"{s.implementation} {s.throughput_samples_per_s:,.0f}" for s in picks) or "-",
                    f"{p.a} {p.ratio:.2f}x [{p.ci_low:.2f}, {p.ci_high:.2f}]" if p else "-",
                    _pct(p.noise_floor) if p else "-",
                    p.verdict if p else "-",
                    {True: "yes", False: "no", None: "not tested"}[p.equivalent] if p else "-",
                    " / ".join(_secs(s) for s in picks) or "-",
                    " / ".join(_mib(s.peak_memory_bytes) for s in picks) or "-",
                ]
            )
        parts.append(
            "### Decision table\n\n"
            + _table(
                [
                    "point",
                    "fastest per framework (samples/s)",
                    "margin [CI]",
                    "noise floor",
                    "verdict",
                    "equivalent",
                    "time to target",
                    "peak MiB",
                ],
                rows,
            )
        )
        impl_rows = [
            [
                ", ".join(f"{k}={_show(v)}" for k, v in c.point.items()) or "-",
                s.implementation,
                f"{s.throughput_samples_per_s:,.0f}",
                ", ".join(f"{m:,.0f}" for m in s.process_medians) + f" ({_pct(s.process_spread)})",
                "-" if s.scaling_efficiency is None else f"{s.scaling_efficiency:.2f}",
                "-" if s.final_metric_mean is None else f"{s.final_metric_mean:.5g} +- {s.final_metric_std:.2g}",
                _secs(s),
                _mib(s.peak_memory_bytes),
            ]
            for c in cells
            for s in c.implementations
        ]
        parts.append(
            "### Every implementation\n\n"
            + _table(
                [
                    "point",
                    "implementation",
                    "samples/s",
                    "per process (spread)",
                    "scaling eff.",
                    "final metric (mean +- std over seeds)",
                    "time to target",
                    "peak MiB",
                ],
                impl_rows,
            )
        )
        pair_rows = [
            [
                ", ".join(f"{k}={_show(v)}" for k, v in c.point.items()) or "-",
                f"{p.a} vs {p.b}",
                f"{p.ratio:.3f} [{p.ci_low:.3f}, {p.ci_high:.3f}]",
                _pct(p.noise_floor),
                p.verdict,
                "-" if p.mean_metric_difference is None else f"{p.mean_metric_difference:.3g}",
                "-" if p.equivalence_p is None else f"{p.equivalence_p:.3g}",
                {True: "yes", False: "no", None: "not tested"}[p.equivalent],
                f"{_pct(p.a_within_b_band)} / {_pct(p.b_within_a_band)}",
            ]
            for c in cells
            for p in c.pairs
        ]
        header = ["point", "a vs b", "ratio [CI]", "noise floor", "verdict", "metric diff a-b", "TOST p", "equivalent"]
        parts.append(
            "### Every pair\n\n"
            + _table([*header, "curve in band a / b"], pair_rows)
            + "\n\n*curve in band*: the share of a's loss curve (trailing means over the equivalence's smoothing "
            "window, every seed) inside b's band over seeds (lowest to highest seed at each step, widened by the "
            "cross-framework parity tolerance), and of b's inside a's; asynchronous training is judged this way "
            "and by the equivalence test, never step for step."
        )
        trouble = [
            f"- {c.label}: {e}"
            for c in cells
            for e in [*c.errors, *(f"{k} skipped: {v}" for k, v in c.skipped.items())]
        ]
        if trouble:
            parts.append("### Failed and skipped runs\n\n" + "\n".join(trouble))
    if plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in plots))
    return "\n\n".join(parts) + "\n"
