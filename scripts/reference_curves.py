"""The loss and eval curves of the shipped reference compares, as one JSON file, so that a change that must not
alter training (a refactor) can be held to bit-identical curves: run it before and after, then `--diff A B`.

    python scripts/reference_curves.py OUT.json [--only NAME ...]
    python scripts/reference_curves.py --diff BEFORE.json AFTER.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
XFW = [sys.executable, "-m", "xfw.cli.main"]

# name -> `xfw compare` arguments; every shipped config and every strategy, each at its config's own step count.
REFERENCES = {
    "mirrored-default": ["--strategy", "mirrored"],
    "single-cnn-digits": ["--strategy", "single", "--config", "configs/cnn_digits.yaml"],
    "pipeline-default": ["--strategy", "pipeline"],
    "model-parallel-cnn-3-stages": [
        "--strategy",
        "model-parallel",
        "--config",
        "configs/cnn_digits.yaml",
        "--set",
        "model_parallel.stages=3",
        "--set",
        "training.steps=100",
        "--set",
        "parallel.oversubscribe=true",
    ],
    "hybrid-default": [
        "--strategy",
        "hybrid",
        "--config",
        "configs/hybrid.yaml",
        "--set",
        "parallel.oversubscribe=true",
    ],
    "collaborative": ["--strategy", "collaborative", "--config", "configs/collaborative.yaml"],
    "independent": ["--strategy", "independent", "--config", "configs/independent.yaml"],
    "mirrored-resnet": ["--strategy", "mirrored", "--config", "configs/resnet.yaml"],
    "mirrored-transformer": ["--strategy", "mirrored", "--config", "configs/transformer.yaml"],
    "local-sgd-k4": ["--strategy", "local-sgd", "--set", "sync.every_k_steps=4"],
    "parameter-server-one-worker": ["--strategy", "parameter-server", "--set", "parallel.replicas=1"],
}


def curves(out: Path) -> dict:
    """Every run's loss curve and evaluation (each network's, for several networks), by the result file's path."""
    found = {}
    for path in sorted(out.rglob("result.json")):
        record = json.loads(path.read_text())
        networks = [{"loss": n.get("loss"), "eval": n.get("eval")} for n in record.get("networks") or []]
        found[str(path.relative_to(out))] = {
            "loss": record.get("loss"),
            "eval": record.get("eval"),
            "networks": networks,
        }
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--diff", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.diff:
        before, after = (json.loads(Path(p).read_text()) for p in args.diff)
        differ = 0
        for name in sorted(set(before) | set(after)):
            a, b = before.get(name), after.get(name)
            if a is None or b is None:
                print(f"{name}: only in {'AFTER' if a is None else 'BEFORE'}")
                differ += 1
                continue
            for run in sorted(set(a) | set(b)):
                same = a.get(run) == b.get(run)
                differ += not same
                print(f"{'same   ' if same else 'DIFFERS'} {name} {run}")
        print(f"{differ} differ")
        return 1 if differ else 0
    results = {}
    for name, extra in REFERENCES.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([*XFW, "compare", *extra, "--out", tmp], cwd=ROOT, capture_output=True, text=True)
            print(f"{name}: exit {proc.returncode}", file=sys.stderr)
            if proc.returncode not in (0, 1):
                print(proc.stderr[-2000:], file=sys.stderr)
            results[name] = curves(Path(tmp))
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
