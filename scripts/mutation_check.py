"""Does the suite catch real bugs? Applies deliberate bugs, each alone on a fresh copy of the code (two copies at
a time), runs the tests that should catch each, and lists, per bug, the test that failed. Exit status 1 if any bug
went unnoticed (or a bug no longer applies because the code it targets changed: update the list below).

    .venv/bin/python scripts/mutation_check.py [--only NAME ...]

Each bug is an exact text replacement in one file; the copy is imported through a path of its own (PYTHONPATH),
so the checkout itself is never modified. CI runs this after the test suite (.ci/run)."""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARALLEL = 2  # mutants checked at once


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]  # in the order pytest runs them (file order), stopping at the first failure


MUTATIONS = [
    Mutation(
        "gradients summed instead of averaged (torch all_reduce)",
        "torch_impl/mirrored.py",
        "        p.grad /= world\n",
        "",
        ("tests/frameworks/test_parity.py::test_data_parallel_matches_single_device",),
    ),
    Mutation(
        "every rank trains the whole global batch (DDP)",
        "torch_impl/mirrored.py",
        "block = replica_slice(run.config.training.global_batch, rank, world)",
        "block = slice(None)",
        (
            "tests/frameworks/test_parity.py::test_data_parallel_matches_single_device",
            "tests/frameworks/test_parity.py::test_each_replica_trained_on_its_own_block",
        ),
    ),
    Mutation(
        "conv kernel transposed (kh and kw swapped) in the weight conversion",
        "common/spec/weights.py",
        "kernel.transpose(3, 2, 0, 1)",
        "kernel.transpose(3, 2, 1, 0)",
        (
            "tests/unit/test_data_weights.py",
            "tests/frameworks/test_parity.py::test_cnn_tf_vs_torch_and_under_ddp_and_mirrored_strategy",
        ),
    ),
    Mutation(
        "torch BatchNorm given Keras's momentum (the old value's weight) as its own",
        "torch_impl/blocks.py",
        "    return nn.BatchNorm2d(channels, eps=cfg.epsilon, momentum=1.0 - cfg.decay)",
        "    return nn.BatchNorm2d(channels, eps=cfg.epsilon, momentum=cfg.decay)",
        ("tests/frameworks/test_forward_parity.py",),
    ),
    Mutation(
        "stride-2 convolutions padded TensorFlow's 'same' way (bottom and right only)",
        "tf_impl/blocks.py",
        "    if stride == 1:\n"
        '        return [keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=name)]',
        "    if True:\n"
        '        return [keras.layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False, name=name)]',
        ("tests/frameworks/test_forward_parity.py",),
    ),
    Mutation(
        "throughput verdict with the comparison flipped",
        "common/judge/compare.py",
        "if ratio > 1 + band and spread.low > 1:",
        "if ratio < 1 + band and spread.low > 1:",
        ("tests/unit/test_verdict_logic.py", "tests/frameworks/test_verdicts.py", "tests/unit/test_judgements.py"),
    ),
    Mutation(
        "NaN losses (rank 0 writes NaN for every step)",
        "common/worker/loop.py",
        "losses[counted] = np.nanmean(per_rank[:, counted], axis=0)",
        "losses[counted] = np.nan",
        ("tests/frameworks/test_parity.py::test_tf_vs_torch_other_optimizer_and_loss_settings",),
    ),
]


def copy_tree(dest: Path) -> None:
    """The tracked files of the checkout (what a clone has), plus untracked ones not ignored."""
    git = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if git.returncode != 0:
        print(f"mutation_check: {ROOT} is not a git checkout ({git.stderr.strip()})", file=sys.stderr)
        sys.exit(2)
    listed = git.stdout.splitlines()
    for rel in listed:
        src = ROOT / rel
        if src.is_symlink():  # xfw/'s links to the top-level folders: relative, so they point into the copy
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).symlink_to(src.readlink())
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def applies(mutation: Mutation, text: str) -> None:
    """Stop the check if the mutation's target is not in `text` exactly once (the code it breaks has moved)."""
    count = text.count(mutation.original)
    if count != 1:
        raise SystemExit(
            f"mutation_check: '{mutation.name}' no longer applies: {mutation.file} holds its target "
            f"{count} times, not once (update scripts/mutation_check.py)"
        )


def apply(mutation: Mutation, tree: Path) -> None:
    path = tree / mutation.file
    text = path.read_text()
    applies(mutation, text)
    path.write_text(text.replace(mutation.original, mutation.mutated))


def check(mutation: Mutation) -> tuple[str | None, float]:
    """The mutation made on a fresh copy of the checkout, and its tests run there: run_tests's answer."""
    with tempfile.TemporaryDirectory(prefix="xfw-mutant-") as tmp:
        tree = Path(tmp) / "tree"
        copy_tree(tree)
        apply(mutation, tree)
        return run_tests(mutation, tree)


def run_tests(mutation: Mutation, tree: Path) -> tuple[str | None, float]:
    """The first of the mutation's tests that fails (node id), or None; and the seconds it took. One pytest run,
    stopping at the first failure, so that a compare shared by several of the tests runs once."""
    env = os.environ | {"PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-rf",
            *mutation.tests,
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)
    if failed:
        return failed[0], took
    if proc.returncode != 0:  # no test collected (a renamed test) or pytest itself failed: not a catch
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
        print(f"mutation_check: pytest exited {proc.returncode} without a failing test: {tail}", file=sys.stderr)
    return None, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only mutations whose name contains this text")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
    if not chosen:
        print(f"mutation_check: no mutation matches {args.only}", file=sys.stderr)
        return 2
    survived = 0
    print(f"mutation check: {len(chosen)} deliberate bug(s), each on a fresh copy of {ROOT}")
    for mutation in chosen:  # before any test runs: a mutation that no longer applies stops the check at once
        applies(mutation, (ROOT / mutation.file).read_text())
    # Two mutants at a time: each runs one single-worker pytest that spends most of its time starting frameworks.
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        outcomes = list(pool.map(check, chosen))
    for mutation, (caught, seconds) in zip(chosen, outcomes):
        if caught:
            print(f"  caught   {mutation.name}\n           by {caught} ({seconds:.0f} s)")
        else:
            survived += 1
            print(f"  MISSED   {mutation.name}\n           {', '.join(mutation.tests)} all passed ({seconds:.0f} s)")
    print(f"mutation check: {len(chosen) - survived} of {len(chosen)} caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
