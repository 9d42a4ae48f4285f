"""Human-readable outputs of a comparison: the side-by-side table (rich), report.md and its PNG plots
(matplotlib). Everything here reads summary.json's structure and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from xfw.common.compare import loss_diff
from xfw.common.semantics import NOTES


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _test_metric(run: dict) -> str:
    ev = run.get("eval") or {}
    if "test_accuracy" in ev:
        return f"acc {ev['test_accuracy']:.3f}"
    return f"loss {ev['test_loss']:.4g}" if "test_loss" in ev else "-"


def run_rows(summary: dict) -> list[list[str]]:
    rows = []
    for r in summary["runs"]:
        if r["status"] != "ok":
            why = r.get("reason") or r.get("error", "").splitlines()[0]
            rows.append([r["id"], r["status"], "-", "-", "-", "-", "-", "-", "-", why])
            continue
        s = r["throughput_spread"]
        rows.append([
            r["id"], "ok", f"{r['loss'][-1]:.5g}", _test_metric(r),
            f"{r['throughput_samples_per_s']:,.0f} [{s['p25']:,.0f}-{s['p75']:,.0f}]",
            f"{r['step_time_s'] * 1e3:.3f}", f"{r['warmup_s']:.2f}", f"{r['peak_memory_bytes'] / 2**20:,.0f}",
            f"{r['flops']['utilization'] * 100:.2f}%",
            f"{r['processes']} proc, weights spread {r['replica_weight_max_abs_diff']:.1g}",
        ])
    return rows


RUN_HEADERS = ["run", "status", "final loss", "test", "samples/s [IQR]", "step ms", "warm-up s", "peak MiB", "FLOP util", "notes"]
CMP_HEADERS = ["a vs b", "kind", "max rel loss diff", "tolerance", "parity", "first step over", "throughput a/b", "scaling eff."]


def comparison_rows(summary: dict) -> list[list[str]]:
    rows = []
    for c in summary["comparisons"]:
        pair = f"{c['a']} vs {c['b']}"
        kind = c["kind"].replace("_", " ")
        if c["status"] != "ok":
            rows.append([pair, kind, "-", f"{c['tolerance']:.0e}", "not compared", "-", "-", c["reason"]])
            continue
        rows.append([
            pair, kind, f"{c['max_rel_loss_diff']:.2e}", f"{c['tolerance']:.0e}",
            "PASS" if c["within_tolerance"] else "FAIL", _fmt(c["first_step_over_tolerance"], "d"),
            f"{c['throughput_ratio']:.2f} [{c['throughput_ratio_spread']['low']:.2f}-{c['throughput_ratio_spread']['high']:.2f}]",
            _fmt(c.get("scaling_efficiency"), ".2f"),
        ])
    return rows


STAGE_HEADERS = ["run", "stage", "layers", "params", "micro-batches", "busy ms/step", "idle", "boundary KiB/step"]


def stage_rows(summary: dict) -> list[list[str]]:
    rows = []
    for r in summary["runs"]:
        mp = r.get("model_parallel") if r["status"] == "ok" else None
        if not mp:
            continue
        for st in mp["per_stage"]:
            idle = f"{st['idle_fraction']:.0%}" + (" (busy > step)" if st.get("busy_exceeds_step") else "")
            rows.append([r["id"], str(st["stage"]), ",".join(st["layers"]), f"{st['parameters']:,}", str(mp["micro_batches"]),
                         f"{st['busy_s_per_step'] * 1e3:.3f}", idle, f"{mp['boundary_bytes_per_step'] / 1024:,.1f}"])
    return rows


def print_tables(summary: dict, console: Console | None = None) -> None:
    console = console or Console()
    runs = Table(title=f"xfw compare --strategy {summary['strategy']}: runs", title_justify="left")
    for h in RUN_HEADERS:
        runs.add_column(h, overflow="fold")
    for row in run_rows(summary):
        style = {"ok": None, "skipped": "dim", "failed": "red"}[row[1]]
        runs.add_row(*row, style=style)
    console.print(runs)
    cmp = Table(title="comparisons (loss per step, throughput)", title_justify="left")
    for h in CMP_HEADERS:
        cmp.add_column(h, overflow="fold")
    for row in comparison_rows(summary):
        cmp.add_row(*row, style={"PASS": None, "FAIL": "red"}.get(row[4], "dim"))
    console.print(cmp)
    rows = stage_rows(summary)
    if rows:
        stages = Table(title="stages (busy: each stage's passes for one step timed alone; idle = 1 - busy / step time)", title_justify="left")
        for h in STAGE_HEADERS:
            stages.add_column(h, overflow="fold")
        for row in rows:
            stages.add_row(*row)
        console.print(stages)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_plots(summary: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in summary["runs"] if r["status"] == "ok"]
    files = []
    if not ok:
        return files
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in ok:
        ax.plot(r["loss"], label=r["id"], linewidth=1)
    ax.set(xlabel="step", ylabel="training loss (global batch)", yscale="log", title="Loss curves, overlaid")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=110)
    plt.close(fig)
    files.append("loss.png")

    compared = [c for c in summary["comparisons"] if c["status"] == "ok"]
    if compared:
        by_id = {r["id"]: r for r in ok}
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for c in compared:
            _, rel = loss_diff(by_id[c["a"]]["loss"], by_id[c["b"]]["loss"])
            # Running maximum: per-step values hop between 0 (identical) and rounding noise; the envelope
            # shows what matters, whether the gap grows with training.
            ax.plot(np.maximum(np.maximum.accumulate(rel), 1e-12), label=f"{c['a']} vs {c['b']}", linewidth=1.2)
        for tol in sorted({c["tolerance"] for c in compared}):
            ax.axhline(tol, color="black", linestyle="--", linewidth=0.8)
        ax.set(xlabel="step", ylabel="largest relative loss difference so far", yscale="log",
               title="Loss difference between runs (dashed: tolerance; 1e-12 = identical)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "loss_diff.png", dpi=110)
        plt.close(fig)
        files.append("loss_diff.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    med = [r["throughput_samples_per_s"] for r in ok]
    low = [m - r["throughput_spread"]["p25"] for m, r in zip(med, ok)]
    high = [r["throughput_spread"]["p75"] - m for m, r in zip(med, ok)]
    colors = ["tab:orange" if r["framework"] == "tf" else "tab:blue" for r in ok]
    ax.bar([r["id"] for r in ok], med, yerr=[low, high], color=colors, capsize=3)
    ax.set(ylabel="samples/s (median, IQR)", title="Throughput (orange: TensorFlow, blue: PyTorch)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=110)
    plt.close(fig)
    files.append("throughput.png")
    return files


def write_report(summary: dict, out_dir: Path) -> Path:
    plots = write_plots(summary, out_dir)
    cfg = summary["config"]
    semantic = {**{k: NOTES[k] for k in ("data_parallel_loss",)}, cfg["optimizer"]["kind"]: NOTES[cfg["optimizer"]["kind"]],
                cfg["loss"]: NOTES[cfg["loss"]]}
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    parts = [
        f"# xfw comparison: strategy `{summary['strategy']}`",
        f"Created {summary['created']} on {summary['machine']['cpu_cores']} CPU cores, {summary['machine']['gpus']} GPUs; "
        f"model `{cfg['model']['kind']}`, data `{cfg['data']['kind']}`, loss `{cfg['loss']}`, optimizer `{cfg['optimizer']['kind']}`, "
        f"global batch {cfg['training']['global_batch']}, {cfg['training']['steps']} steps, {cfg['parallel']['replicas']} replicas, "
        f"{summary['repeats']} repeat(s).",
        "## Runs",
        _markdown_table(RUN_HEADERS, run_rows(summary)),
        "## Comparisons",
        "Relative loss difference per step is |a - b| / max(|a|, |b|); *parity* passes when every step is within the tolerance. "
        "Throughput ratio a/b is the ratio of medians, with the range its interquartile ranges allow. Scaling efficiency is "
        "throughput(parallel) / (replicas x throughput(single)).",
        _markdown_table(CMP_HEADERS, comparison_rows(summary)),
        *(["## Stages",
           "Busy time: after training, each stage's forward and backward passes for one step (one per micro-batch) are "
           "timed alone on its device; idle = 1 - busy / measured step time. Boundary bytes: activations sent forward "
           "plus their gradients sent back across every stage boundary per step (fp32).",
           _markdown_table(STAGE_HEADERS, stage_rows(summary))] if stage_rows(summary) else []),
        *[f"![{p}]({p})" for p in plots],
        "## Where the frameworks differ by design",
        *[f"- **{k}**: {v}" for k, v in semantic.items()],
    ]
    if failed:
        parts += ["## Failures"] + [f"### {r['id']}\n```\n{r['error']}\n```" for r in failed]
    path = out_dir / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path
