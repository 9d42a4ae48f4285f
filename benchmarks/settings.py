"""What each framework's own speed settings buy: float32 vs mixed bfloat16, and no compiler vs its own compiler
(XLA, torch.compile), on the ResNet and the Transformer configs, single device, side by side in one run.

For each config, rounds alternate the settings (baseline, bf16, compile, baseline, ...) so that every setting sees
the same machine state; each round is one `xfw compare --strategy single` (both frameworks, each in a process of
its own), and the figure per setting is the median over rounds of its throughput (timed windows, warm-up and
compilation excluded), shown as a ratio to the same framework's float32, uncompiled baseline. The compile time is
shown apart: the warm-up seconds (compile included) of the compiled runs.

    python benchmarks/settings.py [--config configs/resnet.yaml --config configs/transformer.yaml] [--rounds 2]
        [--steps 200]
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
}
XFW = [sys.executable, "-m", "xfw.cli.main"]


def one_round(config: str, setting: str, steps: int, out: Path) -> dict[str, dict]:
    """Per framework: throughput, warm-up seconds and status of one compare under `setting`."""
    cmd = [*XFW, "compare", "--strategy", "single", "--config", config, "--set", f"training.steps={steps}"]
    proc = subprocess.run([*cmd, *SETTINGS[setting], "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0 or not (out / "summary.json").exists():
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    runs = json.loads((out / "summary.json").read_text())["runs"]
    return {
        r["framework"]: {"samples_per_s": r["throughput_samples_per_s"], "warmup_s": r["warmup_s"]}
        if r["status"] == "ok"
        else {"status": f"{r['status']}: {r.get('reason') or r.get('error', '').splitlines()[0]}"}
        for r in runs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="config file (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    configs = args.config or ["configs/resnet.yaml", "configs/transformer.yaml"]
    table = Table(title="Speed settings, single device: samples/s (median over rounds), ratio to float32")
    for column in ("config", "framework", "setting", "samples/s", "vs float32", "warm-up s (compile incl.)"):
        table.add_column(column)
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            seen: dict[tuple[str, str], list[dict]] = {}
            for r in range(args.rounds):
                for setting in SETTINGS:
                    out = Path(tmp) / f"{Path(config).stem}-{setting}-{r}"
                    for framework, record in one_round(config, setting, args.steps, out).items():
                        seen.setdefault((framework, setting), []).append(record)
            for framework in sorted({fw for fw, _ in seen}):
                base = statistics.median(rec["samples_per_s"] for rec in seen[(framework, "float32")])
                for setting in SETTINGS:
                    records = seen[(framework, setting)]
                    if "status" in records[0]:
                        table.add_row(Path(config).stem, framework, setting, records[0]["status"], "-", "-")
                        continue
                    rate = statistics.median(rec["samples_per_s"] for rec in records)
                    warmup = statistics.median(rec["warmup_s"] for rec in records)
                    table.add_row(
                        Path(config).stem, framework, setting, f"{rate:,.0f}", f"{rate / base:.2f}", f"{warmup:.1f}"
                    )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
