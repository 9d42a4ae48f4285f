"""What each framework's own speed settings buy: float32 vs mixed bfloat16, no compiler vs its own compiler (XLA,
torch.compile), preloaded vs native input pipelines (tf.data, DataLoader), on the ResNet and the Transformer
configs, single device, side by side in one run; and Keras fit beside TensorFlow's custom loop in each.

For each config, rounds alternate the settings (baseline, bf16, compile, native, baseline, ...) so that every
setting sees the same machine state; each round is one `xfw compare --strategy single` (tf-single, tf-fit and
torch-single, each in a process of its own), and the figure per setting is the median over rounds of its throughput
(timed windows, warm-up and compilation excluded), shown as a ratio to the same run's float32, uncompiled,
preloaded baseline, and tf-fit's as a ratio to tf-single under the same setting. The compile time is shown apart:
the warm-up seconds (compile included) of the compiled runs.

    python benchmarks/settings.py [--config configs/resnet.yaml --config configs/transformer.yaml] [--rounds 2]
        [--steps 200] [--setting native_input ...]   (the float32 baseline always runs)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

SETTINGS = {
    "float32": [],
    "mixed_bfloat16": ["--set", "runtime.precision=mixed_bfloat16"],
    "compile": ["--set", "runtime.compile=true"],
    "native_input": ["--set", "data.pipeline=native"],
}
XFW = [sys.executable, "-m", "xfw.cli.main"]


def one_round(config: str, setting: str, steps: int, out: Path) -> dict[str, dict]:
    """Per run id: throughput, warm-up seconds and status of one compare under `setting`."""
    cmd = [*XFW, "compare", "--strategy", "single", "--config", config, "--set", f"training.steps={steps}"]
    proc = subprocess.run([*cmd, *SETTINGS[setting], "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0 or not (out / "summary.json").exists():
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    runs = json.loads((out / "summary.json").read_text())["runs"]
    return {
        r["id"]: {"samples_per_s": r["throughput_samples_per_s"], "warmup_s": r["warmup_s"]}
        if r["status"] == "ok"
        else {"status": f"{r['status']}: {r.get('reason') or r.get('error', '').splitlines()[0]}"}
        for r in runs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="config file (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--setting", action="append", choices=[s for s in SETTINGS if s != "float32"])
    args = parser.parse_args()
    settings = ["float32", *(args.setting or [s for s in SETTINGS if s != "float32"])]
    configs = args.config or ["configs/resnet.yaml", "configs/transformer.yaml"]
    table = Table(title="Speed settings, single device: samples/s (median over rounds), ratio to the baseline")
    for column in ("config", "run", "setting", "samples/s", "vs float32", "vs tf-single", "warm-up s (compile incl.)"):
        table.add_column(column)
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            seen: dict[tuple[str, str], list[dict]] = {}
            for r in range(args.rounds):
                for setting in settings:
                    out = Path(tmp) / f"{Path(config).stem}-{setting}-{r}"
                    for run_id, record in one_round(config, setting, args.steps, out).items():
                        seen.setdefault((run_id, setting), []).append(record)

            def rate(run_id: str, setting: str, seen=seen) -> float | None:
                records = seen[(run_id, setting)]
                ok = "status" not in records[0]
                return statistics.median(rec["samples_per_s"] for rec in records) if ok else None

            for run_id in sorted({r for r, _ in seen}):
                base = rate(run_id, "float32")
                for setting in settings:
                    records, mine = seen[(run_id, setting)], rate(run_id, setting)
                    if mine is None or base is None:
                        table.add_row(Path(config).stem, run_id, setting, records[0]["status"], "-", "-", "-")
                        continue
                    loop = rate("tf-single", setting) if run_id == "tf-fit" else None
                    warmup = statistics.median(rec["warmup_s"] for rec in records)
                    table.add_row(
                        Path(config).stem,
                        run_id,
                        setting,
                        f"{mine:,.0f}",
                        f"{mine / base:.2f}",
                        f"{mine / loop:.2f}" if loop else "-",
                        f"{warmup:.1f}",
                    )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
