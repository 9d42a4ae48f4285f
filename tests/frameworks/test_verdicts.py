"""The judgements end to end, through the real CLI: a diverging run exits 1 with strict JSON, and repeats run round
robin while oversubscribed runs get no verdict (the judgements on hand-made inputs:
tests/unit/test_verdict_logic.py)."""

import json

import pytest

from tests.helpers.cli import load_summary, run_xfw


def test_a_diverging_compare_exits_1_with_strict_json(tmp_path):
    proc = run_xfw(
        "compare",
        "--strategy",
        "single",
        *("--only", "tf-single", "--only", "torch-single"),  # the two custom loops (not Keras fit)
        "--set",
        "optimizer.lr=50",
        "--set",
        "training.steps=40",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 1, proc.stderr
    text = (tmp_path / "summary.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    summary = load_summary(tmp_path)
    steps = {r["id"]: r["diverged_at_step"] for r in summary["runs"]}
    assert steps["tf-single"] is not None and steps["torch-single"] is not None
    (cmp,) = summary["comparisons"]
    assert cmp["within_tolerance"] is False and "diverged" in cmp["note"]
    assert "diverged at step" in proc.stdout and "FAIL (diverged)" in proc.stdout
    assert "Warning" not in proc.stderr  # no numpy warnings leak to the terminal


def test_repeats_run_round_robin_and_oversubscribed_runs_get_no_verdict(tmp_path):
    proc = run_xfw(
        "compare",
        "--strategy",
        "single",
        *("--only", "tf-single", "--only", "torch-single"),
        "--repeats",
        "2",
        "--set",
        "training.steps=40",
        "--set",
        "parallel.threads_per_replica=4",
        "--set",
        "parallel.oversubscribe=true",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Every implementation's repeat 1 before any repeat 2 (progress lines, in the order the runs ended).
    order = [line.split(" in ")[0] for line in proc.stderr.splitlines() if line.startswith("ok ")]
    assert order == [
        "ok tf-single (repeat 1/2)",
        "ok torch-single (repeat 1/2)",
        "ok tf-single (repeat 2/2)",
        "ok torch-single (repeat 2/2)",
    ]
    summary = load_summary(tmp_path)
    for run in summary["runs"]:
        assert run["repeats"] == 2 and run["loss_identical_across_repeats"] and run["oversubscribed"]
        assert len(run["throughput_spread"]["repeat_medians"]) == 2
    (cmp,) = summary["comparisons"]
    assert cmp["verdict"] == "none: tf-single, torch-single oversubscribed" and cmp["change"] is None
    assert "OVERSUBSCRIBED" in proc.stdout
