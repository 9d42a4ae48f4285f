"""The short summary scripts/gpu_check.sh ends with: each GPU test's outcome, then every compare it left behind
(the tests' and the sweep's): per run its status, FLOP utilisation, GPU and RSS memory and process group backend,
and per comparison its parity. Markdown, on stdout."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def test_lines(junit: Path) -> list[str]:
    if not junit.exists():
        return ["- no test report (pytest did not run)"]
    lines = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = f"{tag}: {(found.get('message') or '').splitlines()[0][:200] if found.get('message') else ''}"
        lines.append(f"- {case.get('name')}: {outcome} ({float(case.get('time', 0)):.1f} s)")
    return lines


def compare_lines(summary_path: Path, root: Path) -> list[str]:
    summary = json.loads(summary_path.read_text())
    lines = [f"### {summary_path.parent.relative_to(root)}: `{summary.get('command') or summary['strategy']}`"]
    for r in summary["runs"]:
        if r["status"] != "ok":
            lines.append(f"- {r['id']}: {r['status']}: {(r.get('reason') or r.get('error') or '').splitlines()[0]}")
            continue
        gpu = r.get("device_memory")
        parts = [
            f"{r['throughput_samples_per_s']:,.0f} samples/s",
            f"GPU {gpu['peak_bytes'] / 2**20:,.0f} MiB" if gpu else "no GPU memory",
            f"RSS {r['peak_memory_bytes'] / 2**20:,.0f} MiB",
        ]
        if r.get("flops"):
            f = r["flops"]
            peak = f.get("peak") or {}
            parts.append(
                f"FLOP util {f['utilization'] * 100:.3g}% of {f['peak_flops_per_s'] / 1e12:.2f} TFLOP/s "
                f"(matmul {peak.get('matmul_size')}, tf32 {peak.get('setting', {}).get('tf32')})"
            )
        backend = r["env"].get("process_group_backend")
        if backend:
            parts.append(f"backend {backend}")
        lines.append(f"- {r['id']}: ok, " + ", ".join(parts))
    for c in summary["comparisons"]:
        if c["status"] != "ok":
            lines.append(f"- {c['a']} vs {c['b']}: not compared ({c.get('reason')})")
            continue
        diff = c.get("max_rel_loss_diff")
        lines.append(
            f"- {c['a']} vs {c['b']}: {c['kind']}, max rel diff {diff if diff is None else f'{diff:.2e}'}, "
            f"within tolerance {c['within_tolerance']}, verdict {c.get('verdict')}"
        )
    return lines


def main(out: Path) -> None:
    lines = ["# xfw GPU check", "", "```", (out / "machine.txt").read_text().strip(), "```", "", "## Tests"]
    lines += test_lines(out / "gpu_tests.xml")
    lines += ["", "## Compares"]
    for path in sorted(out.rglob("summary.json")):
        lines += compare_lines(path, out) + [""]
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
