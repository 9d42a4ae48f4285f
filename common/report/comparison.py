"""Human-readable outputs of a comparison: the side-by-side table (rich), report.md and its PNG plots
(matplotlib). Everything here reads summary.json's structure and nothing else."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from xfw.common.judge.compare import loss_diff
from xfw.common.plan.registry import STRATEGY
from xfw.common.records import (
    Comparison,
    FailedRun,
    InterruptedRun,
    NetworksRunEntry,
    RunEntry,
    SkippedRun,
    Summary,
    SweepPoint,
)
from xfw.common.spec.config import config_from_dict
from xfw.common.spec.semantics import NOTES, notes_for
from xfw.common.strategies.base import Framework


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _test_metric(run) -> str:
    ev = run.eval or {}
    if "test_accuracy" in ev:
        return f"acc {ev['test_accuracy']:.3f}"
    return f"loss {ev['test_loss']:.4g}" if "test_loss" in ev else "-"


def run_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for r in summary.runs:
        if r.status != "ok":
            rows.append([r.id, r.status, "-", "-", "-", "-", "-", "-", "-", "-", "-", _why(r)])
            continue
        s = r.throughput_spread
        rows.append(
            [
                r.id,
                _status_text(r),
                f"{r.loss[-1]:.5g}",
                _test_metric(r),
                f"{r.throughput_samples_per_s:,.0f} [{s.p25:,.0f}-{s.p75:,.0f}]",
                f"{r.step_time_s * 1e3:.3f}",
                _input_ms(r),
                f"{r.warmup_s:.2f}",
                f"{r.peak_memory_bytes / 2**20:,.0f}",
                _gpu_mib(r),
                f"{r.flops.utilization * 100:.3g}%",
                "; ".join(
                    [f"{r.processes} proc, weights spread {r.replica_weight_max_abs_diff:.1g}", *_backend(r)]
                    + STRATEGY[r.strategy].run_notes(r)
                    + _flags(r)
                ),
            ]
        )
    return rows


RUN_HEADERS = [
    "run",
    "status",
    "final loss",
    "test",
    "samples/s [IQR]",
    "step ms",
    "input ms",
    "warm-up s",
    "RSS MiB",
    "GPU MiB",
    "FLOP util",
    "notes",
]
# The loss-curve columns every comparison table starts with.
PARITY_HEADERS = ["a vs b", "kind", "max rel loss diff", "tolerance", "parity", "first step over"]
CMP_HEADERS = [
    *PARITY_HEADERS,
    "throughput a/b [range]",
    "scaling eff.",
    "verdict",
    "notes",
]


def _tolerance_text(c: Comparison) -> str:
    if c.tolerance is None:
        return "-"
    return "0 (bit-identical)" if c.tolerance == 0 else f"{c.tolerance:.0e}"


def _parity_text(c: Comparison) -> str:
    """PASS / FAIL, or "not judged" where the strategy's curves are meant to differ from the reference."""
    if c.within_tolerance is None:
        return "not judged"
    if c.within_tolerance:
        return "PASS"
    return "FAIL (diverged)" if c.note and "diverged" in c.note else "FAIL"


def comparison_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for c in summary.comparisons:
        pair = f"{c.a} vs {c.b}"
        kind = c.kind.replace("_", " ")
        if c.status != "ok":
            assert c.reason is not None  # not_compared and compare_networks_pair say why
            rows.append([pair, kind, "-", _tolerance_text(c), "not compared", "-", "-", "-", "-", c.reason])
            continue
        rows.append(
            [
                pair,
                kind,
                _fmt(c.max_rel_loss_diff, ".2e"),
                _tolerance_text(c),
                _parity_text(c),
                _fmt(c.first_step_over_tolerance, "d"),
                _ratio_text(c),
                _fmt(c.scaling_efficiency, ".2f"),
                _verdict_text(c),
                "; ".join(filter(None, (c.note, _envelope_text(c, summary)))),
            ]
        )
    return rows


def _envelope_text(c: Comparison, summary: Summary) -> str:
    """Where the rounding envelope was measured (parity.envelope_factor): within it, or from which step not."""
    factor = summary.config.get("parity", {}).get("envelope_factor")
    if factor is None or c.within_envelope is None:
        return ""
    if c.within_envelope:
        return f"within rounding ({factor:g}x the envelope)"
    return f"a real difference from step {c.envelope_first_over} (over {factor:g}x the rounding envelope)"


STAGE_HEADERS = [
    "run",
    "stage",
    "layers",
    "params",
    "micro-batches",
    "busy ms/step",
    "idle (measured)",
    "bubble (schedule)",
    "to next stage KiB/step",
]


def stage_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for r in summary.runs:
        mp = getattr(r, "model_parallel", None) if r.status == "ok" else None
        if not mp:
            continue
        for st in mp.per_stage:
            idle = f"{st.idle_fraction:.0%}" + (" (busy > step)" if st.busy_exceeds_step else "")
            rows.append(
                [
                    r.id,
                    str(st.stage),
                    ",".join(st.layers),
                    f"{st.parameters:,}",
                    str(mp.micro_batches),
                    f"{st.busy_s_per_step * 1e3:.3f}",
                    idle,
                    _fmt(mp.theoretical_bubble, ".0%"),
                    _fmt(
                        None if st.to_next_stage_bytes_per_step is None else st.to_next_stage_bytes_per_step / 1024,
                        ",.1f",
                    ),
                ]
            )
    return rows


# ---- several networks (independent, collaborative, shared-device) ------------------------------------

NET_HEADERS = [
    "run",
    "network",
    "final loss",
    "test",
    "samples/s [IQR]",
    "step ms",
    "own passes ms",
    "wait ms",
    "device",
]
NET_RUN_HEADERS = [
    "run",
    "status",
    "wall s",
    "timed s",
    "overlap",
    "combined samples/s",
    "RSS MiB",
    "GPU MiB",
    "processes",
    "notes",
]
NET_CMP_HEADERS = [
    *PARITY_HEADERS,
    "combined a/b [range]",
    "slowdown (alone/together)",
    "verdict",
    "notes",
]
SWEEP_HEADERS = ["run", "hidden width", "combined vs sequential [range]", "slowdown (alone/together)", "verdict"]


def _ms(value) -> str:
    return _fmt(None if value is None else value * 1e3, ".3f")


def network_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for r in summary.runs:
        if r.status != "ok":
            continue
        for n in r.networks:
            s = n.throughput_spread
            rows.append(
                [
                    r.id,
                    n.name,
                    "-" if n.loss is None else f"{n.loss[-1]:.5g}",
                    _test_metric(n),
                    f"{n.throughput_samples_per_s:,.0f} [{s.p25:,.0f}-{s.p75:,.0f}]",
                    _ms(n.step_time_s),
                    _ms(n.busy_s_per_step),
                    _ms(n.wait_s_per_step),
                    n.device,
                ]
            )
    return rows


def _run_notes(r) -> str:
    notes = []
    if r.ensemble is not None:
        e = r.ensemble
        metric = e.gain_metric
        notes.append(
            f"ensemble {metric.removeprefix('test_')} {getattr(e, metric):.4g} ({e.gain_over_best_member:+.4g} vs "
            f"best member {e.best_member})"
        )
    if r.exchange is not None:
        notes.append(f"exchanged {r.exchange.bytes_per_step / 1024:,.1f} KiB/step ({r.exchange.what})")
    return "; ".join(notes + _backend(r) + _flags(r))


def _status_text(r) -> str:
    """ok, or where the loss stopped being finite: a diverged run is a result, shown as such."""
    if r.diverged_at_step is not None:
        return f"diverged at step {r.diverged_at_step}"
    metrics = getattr(r, "non_finite_metrics", [])
    return f"diverged ({', '.join(metrics)} not finite)" if metrics else "ok"


def _why(r: SkippedRun | FailedRun | InterruptedRun) -> str:
    return r.error.splitlines()[0] if r.status == "failed" else r.reason


def _input_ms(r) -> str:
    """A timed step's mean wait for its input, and the pipeline that fed it ("-": not measured)."""
    if r.input_wait_s_per_step is None:
        return "-"
    pipeline = r.env.get("data_pipeline", {}).get("kind")
    return f"{r.input_wait_s_per_step * 1e3:.3g}" + (f" ({pipeline})" if pipeline else "")


def _gpu_mib(r) -> str:
    """The framework allocator's peak on the GPU ("-": the run used none)."""
    return "-" if r.device_memory is None else f"{r.device_memory.peak_bytes / 2**20:,.0f}"


def _backend(r) -> list[str]:
    """The process group's backend where it is not the obvious one: gloo on GPUs (ranks sharing a GPU)."""
    backend = r.env.get("process_group_backend")
    return [f"{backend} (ranks share a GPU)"] if backend == "gloo" and r.device_memory is not None else []


def _flags(r) -> list[str]:
    """What the reader must know before trusting the row's numbers."""
    flags = []
    flops = getattr(r, "flops", None)
    if flops is not None and flops.utilization > 1:
        where = f" ({flops.peak.cache})" if flops.peak else ""
        flags.append(
            f"FLOP utilisation above 100%: the cached peak{where} was measured on a busy machine (delete it to "
            "measure again), or the FLOP count is wrong"
        )
    if r.oversubscribed:
        flags.append("OVERSUBSCRIBED: more devices x threads than cores, throughput is contention")
    if not r.loss_identical_across_repeats:
        expected = STRATEGY[r.strategy].repeats_may_differ(r)
        flags.append("loss curves differ between repeats" + (f" ({expected})" if expected else ""))
    errors = r.teardown_errors  # a process that failed after rank 0 had written the complete result: kept, and said
    if errors:
        more = f" (+{len(errors) - 1} more repeats)" if len(errors) > 1 else ""
        flags.append(f"after the result was written: {errors[0]}{more}")
    return flags


BREAKDOWN_HEADERS = [
    "run",
    "profiled step ms",
    "compute",
    "communication",
    "update",
    "input",
    "rest",
    "comm. during compute",
]
BREAKDOWN_PARTS = ("compute", "communication", "update", "input", "rest")


def breakdown_rows(summary: Summary) -> list[list[str]]:
    """Each profiled run's step split (ms per step, and each part's share of the profiled step)."""
    rows = []
    for r in summary.runs:
        b = r.step_breakdown if r.status == "ok" and isinstance(r, RunEntry) else None
        if b is None:
            continue
        parts = [getattr(b, f"{p}_s") for p in BREAKDOWN_PARTS]
        rows.append(
            [
                r.id,
                f"{b.step_s * 1e3:.3f}",
                *[f"{v * 1e3:.3f} ({v / b.step_s:.0%})" for v in parts],
                f"{b.overlap_s * 1e3:.3f}",
            ]
        )
    return rows


def network_run_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for r in summary.runs:
        if r.status != "ok":
            rows.append([r.id, r.status, "-", "-", "-", "-", "-", "-", "-", _why(r)])
            continue
        rows.append(
            [
                r.id,
                _status_text(r),
                f"{r.wall_s:.2f}",
                f"{r.timed_wall_s:.2f}",
                f"{r.overlap:.0%}",
                f"{r.combined_throughput_samples_per_s:,.0f}",
                f"{r.peak_memory_bytes / 2**20:,.0f}",
                _gpu_mib(r),
                str(r.processes),
                _run_notes(r),
            ]
        )
    return rows


def _slowdowns(c: Comparison) -> str:
    values = [f"{name} {v.slowdown:.2f}" for name, v in c.networks.items() if v.slowdown is not None]
    return ", ".join(values) or "-"


def _verdict_text(c: Comparison) -> str:
    if c.verdict is None:
        return "-"
    if c.change is None:  # no verdict could be given, c.verdict says why
        return c.verdict
    once = "; 1 repeat" if c.repeats == 1 else ""  # the range is window-to-window spread only
    return f"{c.verdict} ({c.change:+.0%}, band ±{c.verdict_band:.0%}{once})"


def _ratio_text(c: Comparison | SweepPoint) -> str:
    s = c.throughput_ratio_spread
    return f"{c.throughput_ratio:.2f} [{s.low:.2f}-{s.high:.2f}]"


def network_comparison_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for c in summary.comparisons:
        pair, kind = f"{c.a} vs {c.b}", c.kind.replace("_", " ")
        tolerance = _tolerance_text(c)
        if c.status != "ok":
            assert c.reason is not None  # not_compared and compare_networks_pair say why
            rows.append([pair, kind, "-", tolerance, "not compared", "-", "-", "-", "-", c.reason])
            continue
        rows.append(
            [
                pair,
                kind,
                _fmt(c.max_rel_loss_diff, ".2e"),
                tolerance,
                _parity_text(c),
                _fmt(c.first_step_over_tolerance, "d"),
                _ratio_text(c),
                _slowdowns(c),
                _verdict_text(c),
                c.note or "",
            ]
        )
    return rows


def sweep_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for line in summary.sweep or []:
        for p in line.points:
            slow = ", ".join(f"{k} {v:.2f}" for k, v in p.slowdown.items())
            rows.append([line.run, str(p.hidden_width), _ratio_text(p), slow, p.verdict])
    return rows


def sweep_flips(summary: Summary) -> list[str]:
    lines = []
    for line in summary.sweep or []:
        if not line.flips:
            verdicts = {p.verdict for p in line.points}
            lines.append(f"{line.run}: {' / '.join(sorted(verdicts))} at every width measured")
        for f in line.flips:
            lines.append(f"{line.run}: {f['verdict_from']} at width {f['from']}, {f['verdict_to']} at width {f['to']}")
    return lines


def _sections(summary: Summary) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(heading, caption, headers, rows) of every table, in order: the console and report.md show the same."""
    runs_caption = f"{summary.command or f'xfw compare --strategy {summary.strategy}'}: runs"
    if not STRATEGY[summary.strategy].several_networks:
        sections = [
            ("Runs", runs_caption, RUN_HEADERS, run_rows(summary)),
            ("Comparisons", "comparisons (loss per step, throughput)", CMP_HEADERS, comparison_rows(summary)),
        ]
        if breakdown_rows(summary):
            sections.append(
                (
                    "Where the time goes",
                    "where the time goes (ms per step, share of the profiled step; profiled warm-up steps)",
                    BREAKDOWN_HEADERS,
                    breakdown_rows(summary),
                )
            )
        if stage_rows(summary):
            sections.append(
                (
                    "Stages",
                    "stages (busy: each stage's passes for one step timed alone; idle = 1 - busy / step time)",
                    STAGE_HEADERS,
                    stage_rows(summary),
                )
            )
        return sections
    sections = [
        ("Runs", runs_caption, NET_RUN_HEADERS, network_run_rows(summary)),
        (
            "Networks",
            "networks (own passes: the network's forward+backward timed alone; wait = step - own passes)",
            NET_HEADERS,
            network_rows(summary),
        ),
        (
            "Comparisons",
            "comparisons (loss per step of each network, matched by name; combined throughput)",
            NET_CMP_HEADERS,
            network_comparison_rows(summary),
        ),
    ]
    if sweep_rows(summary):
        sections.append(
            (
                "Size sweep",
                "size sweep: concurrent vs one after another on the same device",
                SWEEP_HEADERS,
                sweep_rows(summary),
            )
        )
    return sections


def print_tables(summary: Summary, console: Console | None = None) -> None:
    console = console or Console()
    for _, caption, headers, rows in _sections(summary):
        table = Table(title=caption, title_justify="left")
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in rows:
            style = None
            if "status" in headers:
                style = {"ok": None, "skipped": "dim"}.get(row[headers.index("status")], "red")  # failed, diverged
            if "parity" in headers:
                parity = row[headers.index("parity")]
                style = None if parity == "PASS" else "red" if parity.startswith("FAIL") else "dim"
            table.add_row(*row, style=style)
        console.print(table)
    for line in sweep_flips(summary):
        console.print(line, highlight=False)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _curves(run) -> dict[str, list[float]]:
    """Label -> loss curve: the run's one curve, or one per network that has a loss."""
    if not isinstance(run, NetworksRunEntry):
        return {run.id: run.loss}
    return {f"{run.id} {n.name}": n.loss for n in run.networks if n.loss is not None}


def _diff_curves(c: Comparison, by_id: dict) -> dict[str, np.ndarray]:
    a, b = _curves(by_id[c.a]), _curves(by_id[c.b])
    several = getattr(by_id[c.a], "networks", None) is not None
    pairs = (
        zip(a.values(), b.values())
        if not several
        else ((a[f"{c.a} {name}"], b[f"{c.b} {name}"]) for name in c.networks)
    )
    labels = [f"{c.a} vs {c.b}"] if not several else [f"{c.a} vs {c.b}: {n}" for n in c.networks]
    return {label: loss_diff(x, y)[1] for label, (x, y) in zip(labels, pairs)}


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write` into a temporary file, renamed to `path` when whole: a full disk leaves no half-written plot or
    report and no temporary file; the OSError names `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def write_plots(summary: Summary, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in summary.runs if r.status == "ok"]
    files: list[str] = []
    if not ok:
        return files
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in ok:
        for label, curve in _curves(r).items():
            ax.plot(curve, label=label, linewidth=1)
    if summary.loss_floor is not None:
        ax.axhline(
            summary.loss_floor, color="black", linestyle=":", linewidth=1, label="best achievable (entropy rate)"
        )
    ax.set(xlabel="step", ylabel="training loss (global batch)", yscale="log", title="Loss curves, overlaid")
    ax.legend(fontsize=7 if len(ok) < 12 else 5)
    fig.tight_layout()
    save_figure(fig, out_dir / "loss.png")
    files.append("loss.png")

    compared = [c for c in summary.comparisons if c.status == "ok"]
    if compared:
        by_id = {r.id: r for r in ok}
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for c in compared:
            for label, rel in _diff_curves(c, by_id).items():
                # Running maximum: per-step values hop between 0 (identical) and rounding noise; the envelope
                # shows what matters, whether the gap grows with training.
                ax.plot(np.maximum(np.maximum.accumulate(rel), 1e-12), label=label, linewidth=1.2)
        for tol in sorted({c.tolerance for c in compared if c.tolerance}):
            ax.axhline(tol, color="black", linestyle="--", linewidth=0.8)
        factor = summary.config.get("parity", {}).get("envelope_factor")
        for fw, curve in (summary.envelopes or {}).items():
            ax.plot(
                factor * np.maximum(np.nan_to_num(curve, nan=np.inf), 1e-12),
                color="grey",
                linestyle=":" if fw == Framework.TF else "-.",
                linewidth=1,
                label=f"{factor:g}x rounding envelope ({fw}: weights moved one ulp)",
            )
        ax.set(
            xlabel="step",
            ylabel="largest relative loss difference so far",
            yscale="log",
            title="Loss difference between runs (dashed: tolerance; 1e-12 = identical)",
        )
        ax.legend(fontsize=7 if len(compared) < 8 else 5)
        fig.tight_layout()
        save_figure(fig, out_dir / "loss_diff.png")
        files.append("loss_diff.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    med = [r.throughput_samples_per_s for r in ok]
    colors = ["tab:orange" if r.framework == Framework.TF else "tab:blue" for r in ok]
    if all(isinstance(r, RunEntry) for r in ok):
        low = [m - r.throughput_spread.p25 for m, r in zip(med, ok)]
        high = [r.throughput_spread.p75 - m for m, r in zip(med, ok)]
        ax.bar([r.id for r in ok], med, yerr=[low, high], color=colors, capsize=3)
        ax.set(ylabel="samples/s (median, IQR)")
    else:
        ax.bar([r.id for r in ok], med, color=colors)
        ax.set(ylabel="combined samples/s, all networks")
    ax.set(title="Throughput (orange: TensorFlow, blue: PyTorch)")
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    save_figure(fig, out_dir / "throughput.png")
    files.append("throughput.png")

    profiled = [r for r in ok if getattr(r, "step_breakdown", None) is not None]
    if profiled:
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.35 * len(profiled)))
        left = np.zeros(len(profiled))
        for part in BREAKDOWN_PARTS:
            ms = np.array([getattr(r.step_breakdown, f"{part}_s") * 1e3 for r in profiled])
            ax.barh([r.id for r in profiled], ms, left=left, label=part)
            left += ms
        ax.set(xlabel="ms per step (profiled warm-up steps)", title="Where the time goes")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        save_figure(fig, out_dir / "breakdown.png")
        files.append("breakdown.png")

    if summary.sweep:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for line in summary.sweep:
            ax.plot(
                [p.hidden_width for p in line.points],
                [p.throughput_ratio for p in line.points],
                marker="o",
                label=line.run,
            )
        band = summary.config["shared_device"]["verdict_band"]
        ax.axhspan(1 - band, 1 + band, color="grey", alpha=0.2)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set(
            xscale="log",
            xlabel="hidden width",
            ylabel="combined throughput / sequential",
            title="Sharing one device: above the band concurrency helps, below it hurts",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out_dir / "sweep.png")
        files.append("sweep.png")
    return files


EXPLAIN = {
    "localize": (
        "For the first failing comparison of each kind, both runs were replayed by a trace worker (as `xfw "
        "localize A B` does): weights and gradients every K steps and every step's loss, then every tensor around "
        "the first step that differs by more than the comparison's tolerance. The verdict names that step, the first "
        "tensor, block output and gradient over it; the explanation comes from checks run on the captured tensors "
        "(kinks, Adam's epsilon, BatchNorm statistics, padding, rounding growth)."
    ),
    "breakdown": (
        "The last training.profile_steps warm-up steps of rank 0 run under the framework's own profiler; the timed "
        "steps run without it, so a profiled step may take longer than the step ms above (read the shares). "
        "Each part is the wall time during which at least one of its events ran, on any thread; where two ran at "
        "once the time goes to communication, then update, then input, then compute, so communication that "
        "overlaps the backward pass (DDP's buckets, MirroredStrategy's collectives, Horovod's background "
        "all-reduces) counts as communication, and *comm. during compute* says how much of it did. Input: the wait "
        "for the step's batch outside the step, or the pipeline's ops inside it (Keras fit). Rest: the step's wall "
        "time not covered by any event (Python, dispatch, launch overhead). How each profiler's events were sorted:"
    ),
    "comparisons": (
        "Relative loss difference per step is |a - b| / max(|a|, |b|); *parity* passes when every step is within "
        "the tolerance. "
        "Throughput ratio a/b is the ratio of medians, with the range its interquartile ranges allow. Scaling "
        "efficiency is "
        "throughput(parallel) / (replicas x throughput(single))."
    ),
    "stages": (
        "Busy time: after training, each stage's forward and backward passes for one step (one per micro-batch) are "
        "timed alone on its device; idle = 1 - busy / measured step time. Bubble (schedule): the idle share GPipe "
        "and 1F1B leave each stage with even stages and free transfers, (S - 1) / (M + S - 1); measured idle above "
        "it is uneven stages, transfers and scheduling. To next stage: activations sent forward plus their "
        "gradients sent back across that stage's boundary per step (fp32)."
    ),
    "networks": (
        "Each network's curve is diffed against the same network (matched by name) in the other run. Independent and "
        "shared-device runs must be bit-identical to their framework's sequential run (tolerance 0): training next to "
        "another network may change how long a network takes, never what it computes. *Combined a/b*: all networks' "
        "samples per second of the timed stretch, a over b (the same samples, so also b's timed wall time over a's). "
        "*Slowdown*: a network's throughput alone (sequential run) over its throughput together with the others. "
        "*Range*: the ratio's plausible range from both runs' per-network interquartile ranges (window to window). "
        "*Verdict*: concurrency helps (or hurts) when combined throughput beats (or trails) the reference by more than "
        "the band (shared_device.verdict_band) and the whole range is above (or below) 1; otherwise no clear "
        "difference. *Own passes*: the network's forward and backward on one batch timed "
        "alone after training; *wait* = step time - own passes: time spent on its partner and the exchange. "
        "*Overlap*: share of the timed stretch during which the networks trained at the same time."
    ),
}


def measurement_lines(summary: Summary) -> list[str]:
    """What the memory and utilisation columns count, and each run's peak: how and when it was measured."""
    lines = [
        "RSS MiB: peak resident set size of the largest process (one model), or the sum over processes "
        "(several networks). GPU MiB: the framework allocator's peak bytes on the GPU (torch.cuda."
        "max_memory_allocated, tf.config.experimental.get_memory_info(...)['peak']), counted the same way; "
        "'-': the run used no GPU.",
    ]
    peaks = {r.id: r.flops.peak for r in summary.runs if r.status == "ok" and getattr(r, "flops", None)}
    if peaks:
        lines.append(
            "FLOP util: training FLOPs per sample (3 x the forward pass's multiply-adds x 2) x samples/s, over one "
            "device's peak x the devices the run occupied (distinct GPUs, where ranks share one). The peak is the "
            "best rate of square matmuls in the run's precision and math mode, grown until a doubling gains under 3%."
        )
    for run_id, peak in peaks.items():
        if peak is None:
            continue
        s = peak.setting
        mode = ("TF32 on" if s.get("tf32") else "TF32 off") if s.get("gpu") else f"{s.get('threads')} threads"
        lines.append(
            f"{run_id}: peak {peak.flops_per_s / 1e9:,.1f} GFLOP/s ({s.get('framework')}, {s.get('device')}, "
            f"{s.get('precision')}, "
            f"{mode}, {peak.matmul_size}x{peak.matmul_size} matmuls), measured "
            f"{peak.measured_at}" + (f", read from {peak.cache}" if peak.cached else f", kept in {peak.cache}")
        )
    return lines


def write_report(summary: Summary, out_dir: Path) -> Path:
    # An earlier compare's report.md must not pass for this one's if this one cannot be written.
    (out_dir / "report.md").unlink(missing_ok=True)
    plots = write_plots(summary, out_dir)
    cfg = summary.config
    kind = STRATEGY[summary.strategy]
    multi = kind.several_networks
    optimizers = [cfg["optimizer"]]
    if multi:  # every optimizer and loss any of the networks uses
        optimizers += [n["optimizer"] for n in cfg["networks"] if n.get("optimizer")] + [
            cfg["collaborative"]["head_optimizer"] or cfg["optimizer"]
        ]
    losses = [cfg["loss"]] + ([n["loss"] for n in cfg["networks"] if n.get("loss")] if multi else [])
    semantic = {o["kind"]: NOTES[o["kind"]] for o in optimizers} | {loss: NOTES[loss] for loss in losses}
    if not multi:
        semantic = {"data_parallel_loss": NOTES["data_parallel_loss"]} | semantic
    semantic |= {k: v for k, v in notes_for(config_from_dict(cfg)).items() if k not in semantic}
    failed = [r for r in summary.runs if r.status == "failed"]
    shape = (
        f"networks {', '.join(n['name'] for n in cfg['networks'])} (see the config below for each one's model and "
        "optimizer)"
        if multi
        else f"{cfg['parallel']['replicas']} replicas"
    )
    parts = [
        f"# xfw comparison: strategy `{summary.strategy}`",
        f"Created {summary.created} on {summary.machine.cpu_cores} CPU cores, {summary.machine.gpus} GPUs; "
        f"model `{cfg['model']['kind']}`, data `{cfg['data']['kind']}`, loss `{cfg['loss']}`, optimizer "
        f"`{cfg['optimizer']['kind']}`, "
        f"global batch {cfg['training']['global_batch']}, {cfg['training']['steps']} steps, {shape}, "
        f"{summary.repeats} repeat(s)"
        + (", interleaved: every run's repeat k before any repeat k+1." if summary.repeats > 1 else "."),
    ]
    if summary.loss_floor is not None:
        parts.append(
            f"Best achievable loss on this data: {summary.loss_floor:.4f} nats per token (the generating Markov "
            "chain's entropy rate: no model predicts the next token better than the chain itself). A run's final "
            "loss minus this is what it has left to learn."
        )
    for heading, caption, headers, rows in _sections(summary):
        parts += [f"## {heading}", _markdown_table(headers, rows)]
        if heading == "Comparisons":
            parts.append(EXPLAIN["networks" if multi else "comparisons"])
        if heading == "Stages":
            parts.append(EXPLAIN["stages"])
        if heading == "Where the time goes":
            parts.append(EXPLAIN["breakdown"])
            users: dict[str, list[str]] = {}
            for r in summary.runs:
                if r.status == "ok" and getattr(r, "step_breakdown", None):
                    users.setdefault(r.step_breakdown.profiler, []).append(r.id)
            parts.append("\n".join(f"- {', '.join(ids)}: {how}" for how, ids in users.items()))
        if heading == "Networks":
            parts.append(caption[len("networks ") :].strip("()").capitalize() + ".")
    parts += [f"- {line}" for line in sweep_flips(summary)]
    parts += [f"![{p}]({p})" for p in plots]
    if summary.localizations:
        parts += ["## Where the failing curves part (`--localize`)", EXPLAIN["localize"]]
        for pair in summary.localizations:
            parts.append(f"### {pair.a} vs {pair.b}")
            if pair.error is not None:
                parts.append(f"The replay failed: {pair.error.splitlines()[0]}")
                continue
            parts += [
                f"**{pair.verdict}**",
                pair.explanation,
                f"Tables: [{pair.folder}/localize.md]({pair.folder}/localize.md)",
            ]
            if pair.parted:
                parts.append(f"![{pair.folder}/localize.png]({pair.folder}/localize.png)")
    parts += ["## How memory and FLOP utilisation are counted", *[f"- {line}" for line in measurement_lines(summary)]]
    parts += ["## Where the frameworks differ by design", *[f"- **{k}**: {v}" for k, v in semantic.items()]]
    if multi:
        parts += ["## Config", "```json\n" + json.dumps({k: cfg[k] for k in kind.config_sections}, indent=1) + "\n```"]
    if failed:
        parts += ["## Failures"] + [f"### {r.id}\n```\n{r.error}\n```" for r in failed]
    path = out_dir / "report.md"
    write_atomically(path, lambda tmp: tmp.write_text("\n\n".join(parts) + "\n"))
    return path
