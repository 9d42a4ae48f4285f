"""Model parallelism, pipelining and hybrid data x model parallelism: parity of every implementation through `xfw
compare` (the split and bad input: tests/unit/test_model_parallel_split.py)."""

import pytest

from tests.helpers.cli import load_summary, run_xfw
from tests.helpers.curves import max_rel
from tests.helpers.work_split import assert_replicas_split_the_batch
from xfw.common.plan.machine import this_machine
from xfw.common.spec.config import Config


def check_parity(summary: dict, expected: set[str]):
    runs = {r["id"]: r for r in summary["runs"]}
    ran = {i for i, r in runs.items() if r["status"] == "ok" and r["strategy"] != "single"}
    errors = {i: r.get("error") for i, r in runs.items()}
    assert expected == ran if this_machine().gpus == 0 else expected <= ran, errors
    config = Config.model_validate(summary["config"])
    for rid in ran:
        r = runs[rid]
        assert_replicas_split_the_batch(r, config)
        assert max_rel(r["loss"], runs[f"{r['framework']}-single"]["loss"]) <= 1e-5, rid
        assert r["replica_weight_max_abs_diff"] == 0.0, rid
        stages = r["model_parallel"]["per_stage"]
        assert len(stages) == r["model_parallel"]["stages"] and all(s["busy_s_per_step"] > 0 for s in stages)
        # Each stage on a device of its own (TF: where its weights were placed; torch: its process's device).
        assert len({s["device"] for s in stages}) == len(stages) and None not in {s["device"] for s in stages}, stages
    for c in summary["comparisons"]:
        if c["status"] == "ok":
            assert c["within_tolerance"], c
    return runs


def test_model_parallel_parity(tmp_path):
    proc = run_xfw("compare", "--strategy", "model-parallel", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = check_parity(load_summary(tmp_path), {"tf-placed-stages", "torch-send-recv"})
    assert runs["torch-send-recv"]["processes"] == 2
    assert runs["torch-send-recv"]["model_parallel"]["boundary_bytes_per_step"] == 2 * 50 * 32 * 4
    if this_machine().gpus < 2:
        assert runs["torch-placed-stages"]["status"] == "skipped" and "GPUs" in runs["torch-placed-stages"]["reason"]
    assert "stages (busy" in proc.stdout


def test_pipeline_parity_and_tf_vs_torch(tmp_path):
    proc = run_xfw("compare", "--strategy", "pipeline", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = load_summary(tmp_path)
    runs = check_parity(summary, {"tf-gpipe", "torch-gpipe", "torch-1f1b"})
    mp = runs["torch-1f1b"]["model_parallel"]
    assert mp["micro_batches"] == 4
    # The schedule's bubble beside the measured idle: (S - 1) / (M + S - 1) = 1 / 5 for 2 stages, 4 micro-batches.
    assert mp["theoretical_bubble"] == pytest.approx(1 / 5)
    # Boundary traffic once per boundary: the first stage sends 50 activations per sample forward and gets their
    # gradients back; the last stage sends nothing.
    sends = [st["to_next_stage_bytes_per_step"] for st in mp["per_stage"]]
    assert sends == [2 * 50 * 32 * 4, None] and mp["boundary_bytes_per_step"] == 2 * 50 * 32 * 4
    assert "bubble (schedule)" in proc.stdout
    (cross,) = [c for c in summary["comparisons"] if (c["a"], c["b"]) == ("tf-gpipe", "torch-gpipe")]
    assert cross["within_tolerance"]


def test_hybrid_two_by_two_parity(tmp_path):
    proc = run_xfw("compare", "--strategy", "hybrid", "--set", "parallel.oversubscribe=true", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = check_parity(load_summary(tmp_path), {"tf-hybrid", "torch-hybrid"})
    assert runs["torch-hybrid"]["processes"] == 4 and runs["tf-hybrid"]["devices"] == 4
    # Each replica's block goes to its first stage: another device (TF), another process (torch, ranks 0 and 2).
    assert len({w["device"] for w in runs["tf-hybrid"]["work_split"]}) == 2
    assert [w["process"] for w in runs["torch-hybrid"]["work_split"]] == [0, 2]


def test_cnn_pipeline_with_a_conv_activation_crossing_stages(tmp_path):
    # Three stages, the first boundary after a conv block: NHWC (TF) and NCHW (torch) activations cross it.
    proc = run_xfw(
        "compare",
        "--strategy",
        "pipeline",
        "--config",
        "configs/cnn_digits.yaml",
        "--set",
        "model_parallel.stages=3",
        "--set",
        "model_parallel.split_points=[conv1, dense0]",
        "--set",
        "parallel.oversubscribe=true",
        "--set",
        "training.steps=100",
        "--only",
        "tf-gpipe",
        "--only",
        "torch-gpipe",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = check_parity(load_summary(tmp_path), {"tf-gpipe", "torch-gpipe"})
    assert max_rel(runs["tf-gpipe"]["loss"], runs["torch-gpipe"]["loss"]) <= 1e-5
