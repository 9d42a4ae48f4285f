"""How pipeline throughput and each stage's idle fraction change with the number of micro-batches M.

Runs `xfw compare --strategy pipeline` once per M (same config otherwise) and prints every pipeline
implementation side by side: samples/s, its ratio to the framework's single-device run measured in the
same compare, each stage's idle fraction, and the parity against single device.

    python benchmarks/pipeline_microbatches.py [--micro-batches 1,2,4,8] [--config FILE] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

XFW = str(Path(sys.executable).with_name("xfw"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batches", default="1,2,4,8")
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in [int(v) for v in args.micro_batches.split(",")]:
            out = Path(tmp) / f"m{m}"
            cmd = [
                XFW,
                "compare",
                "--strategy",
                "pipeline",
                "--set",
                f"model_parallel.micro_batches={m}",
                "--out",
                str(out),
            ]
            cmd += (["--config", args.config] if args.config else []) + [
                a for o in args.overrides for a in ("--set", o)
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if not (out / "summary.json").exists():
                raise SystemExit(f"M={m}: {proc.stderr.strip()}")
            summary = json.loads((out / "summary.json").read_text())
            runs = {r["id"]: r for r in summary["runs"]}
            cmps = {c["a"]: c for c in summary["comparisons"] if c["kind"] == "same_framework"}
            for r in summary["runs"]:
                if r["strategy"] != "pipeline":
                    continue
                if r["status"] != "ok":
                    rows.append([r["id"], str(m), r["status"], "-", "-", "-"])
                    continue
                single = runs[f"{r['framework']}-single"]["throughput_samples_per_s"]
                idle = " / ".join(f"{s['idle_fraction']:.0%}" for s in r["model_parallel"]["per_stage"])
                rows.append(
                    [
                        r["id"],
                        str(m),
                        f"{r['throughput_samples_per_s']:,.0f}",
                        f"{r['throughput_samples_per_s'] / single:.2f}",
                        idle,
                        f"{cmps[r['id']]['max_rel_loss_diff']:.1e}",
                    ]
                )
    table = Table(title="pipeline throughput vs micro-batches (one xfw compare per M)", title_justify="left")
    for h in ("run", "M", "samples/s", "vs single device", "idle per stage", "max rel loss diff vs single"):
        table.add_column(h)
    for row in sorted(rows, key=lambda r: (r[0], int(r[1]))):
        table.add_row(*row)
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)


if __name__ == "__main__":
    main()
