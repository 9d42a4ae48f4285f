"""How often to synchronise, on a real network: synchronous data parallelism, float16 and PowerSGD gradient
compression, local SGD (k = 4, 16) and asynchronous training with a parameter server, each on 2 virtual hosts
(network namespaces joined by veth links, common/execute/hosts.py), with unlimited links and with each link limited by a
token bucket (tc tbf), in both frameworks.

Each setting is one `xfw compare` with network.hosts=2 (and network.rate) over the same config, so every run has
the same initial weights, data and sample order; the table gives, per run: samples/s over the timed windows, the
bytes each host sent per step (measured on its link: setup and final gathers included), the final loss and the
seconds from the end of the first step (which traces, compiles and meets the other ranks: its time says nothing
about synchronising) until the trailing 10-step mean loss first reaches the target. The plot (sync_tradeoff.png in
--out) draws that loss against the same seconds for every run, at each rate.

An asynchronous run's steps are its updates (each one worker's whole batch, applied by the server as it arrives), in
the order applied; its samples/s counts the samples of the updates applied. Needs root (namespaces).

    python benchmarks/sync_tradeoff.py [--rate 100mbit] [--steps 200] [--layers 10,256,256,10] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from xfw.common.judge.stats import first_reach, smoothed, step_end_times

XFW = [sys.executable, "-m", "xfw.cli.main"]
# setting -> (strategy, run ids, --set overrides)
SETTINGS = {
    "synchronous": ("mirrored", ["tf-multi-worker", "torch-ddp"], []),
    "fp16 gradients": ("mirrored", ["torch-ddp", "tf-horovod", "torch-horovod"], ["compression"]),
    "PowerSGD rank 4": ("mirrored", ["torch-ddp"], ["parallel.engine.ddp.comm_hook=powersgd"]),
    "local SGD k=4": ("local-sgd", ["tf-local-sgd", "torch-local-sgd"], ["sync.every_k_steps=4"]),
    "local SGD k=16": ("local-sgd", ["tf-local-sgd", "torch-local-sgd"], ["sync.every_k_steps=16"]),
    # one server with the first worker on host 0 (TensorFlow's chief too), the second worker on host 1
    "asynchronous": ("parameter-server", ["tf-parameter-server", "torch-parameter-server"], []),
}


def overrides(setting: str) -> list[str]:
    sets = SETTINGS[setting][2]
    if sets == ["compression"]:  # each engine's own float16 compression
        return ["parallel.engine.ddp.comm_hook=fp16", "parallel.engine.horovod.compression=fp16"]
    if setting.startswith("PowerSGD"):
        return [*sets, "parallel.engine.ddp.powersgd_rank=4"]
    return sets


def run_setting(setting: str, rate: str | None, base: list[str], out: Path) -> list[dict]:
    strategy, ids, _ = SETTINGS[setting]
    sets = [*base, "network.hosts=2", *overrides(setting)] + ([f"network.rate={rate}"] if rate else [])
    cmd = [*XFW, "compare", "--strategy", strategy, *[a for i in ids for a in ("--only", i)]]
    cmd += [a for s in sets for a in ("--set", s)] + ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not (out / "summary.json").exists():
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    rows = []
    for r in json.loads((out / "summary.json").read_text())["runs"]:
        if r["id"] not in ids:
            continue  # the one-device references
        if r["status"] != "ok":
            rows.append({"setting": setting, "rate": rate, "run": r["id"], "status": r["status"]})
            continue
        result = json.loads((out / "runs" / r["id"] / "repeat-0" / "result.json").read_text())
        timing = result["timing"]
        seconds = step_end_times(
            timing["warmup_steps"], timing["warmup_s"], [(w["steps"], w["seconds"]) for w in timing["windows"]]
        )
        seconds = seconds - seconds[0]  # from the end of the first step
        rows.append(
            {
                "setting": setting,
                "rate": rate,
                "run": r["id"],
                "status": "ok",
                "samples_per_s": r["throughput_samples_per_s"],
                "bytes_per_step": r["network"]["bytes_per_step"],
                "loss": r["loss"],
                "seconds": seconds.tolist(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="100mbit", help="the limited links' rate (tc syntax)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--layers", default="10,256,256,10", help="the MLP's widths")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="xfw-sync-"))
    base = [f"training.steps={args.steps}", f"model.layers=[{args.layers}]"]
    rows = []
    for rate in (None, args.rate):
        for setting in SETTINGS:
            folder = out / f"{setting.replace(' ', '_').replace('=', '')}-{rate or 'unlimited'}"
            rows += run_setting(setting, rate, base, folder)
    ok = [r for r in rows if r["status"] == "ok"]
    # the target: what synchronous training's trailing mean reaches at 80% of the run, the easier of its two runs
    sync_runs = [r for r in ok if r["setting"] == "synchronous" and r["rate"] is None]
    target = max(smoothed(np.array(r["loss"]), 10)[int(0.8 * args.steps)] for r in sync_runs)
    table = Table(title=f"2 hosts, MLP {args.layers}, {args.steps} steps; target loss {target:.4f}")
    for column in ("link", "setting", "run", "samples/s", "KB/step", "final loss", "s to target"):
        table.add_column(column, justify="right" if column in ("samples/s", "KB/step", "final loss") else "left")
    for r in rows:
        if r["status"] != "ok":
            table.add_row(r["rate"] or "unlimited", r["setting"], r["run"], r["status"], "", "", "")
            continue
        reached = first_reach(smoothed(np.array(r["loss"]), 10), target, below=True)
        table.add_row(
            r["rate"] or "unlimited",
            r["setting"],
            r["run"],
            f"{r['samples_per_s']:,.0f}",
            f"{r['bytes_per_step'] / 1e3:,.1f}",
            f"{r['loss'][-1]:.4f}",
            "-" if reached is None else f"{r['seconds'][reached]:.2f}",
        )
    Console(width=160).print(table)
    (out / "sync_tradeoff.json").write_text(json.dumps(rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, rate in zip(axes, (None, args.rate)):
        for r in (r for r in ok if r["rate"] == rate):
            ax.plot(r["seconds"], smoothed(np.array(r["loss"]), 10), label=f"{r['setting']}: {r['run']}")
        ax.axhline(target, color="black", linestyle=":", linewidth=1)
        ax.set(xlabel="seconds after the first step", title=f"links: {rate or 'unlimited'}")
    axes[0].set_ylabel("training loss (trailing 10-step mean)")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "sync_tradeoff.png", dpi=120)
    print(f"{out / 'sync_tradeoff.png'}\n{out / 'sync_tradeoff.json'}")


if __name__ == "__main__":
    main()
