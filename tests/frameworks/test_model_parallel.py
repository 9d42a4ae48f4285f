"""Model parallelism, pipelining and hybrid data x model parallelism: the split (no framework), bad input
through the CLI, and parity of every implementation through `xfw compare`."""

import pytest
from conftest import assert_one_line_error, load_summary, run_xfw, xfw_in_process
from test_parity import max_rel
from work_split import assert_replicas_split_the_batch

from xfw.common.errors import UserError
from xfw.common.plan.registry import this_machine
from xfw.common.spec.config import Config, load_config
from xfw.common.spec.partition import boundary_bytes_per_step, plan_stages

DEEP = "model.layers=[10,64,64,64,10]"


def test_even_split_balances_parameters():
    stages = plan_stages(load_config(None, [DEEP, "model_parallel.stages=3"]))
    assert [s.names for s in stages] == [["dense0"], ["dense1"], ["dense2", "dense3"]]
    assert [s.parameters for s in stages] == [704, 4160, 4810]
    assert stages[1].input_shape == (64,) and stages[-1].output_shape == (10,)


def test_named_split_points_and_boundary_bytes():
    cfg = load_config(
        "configs/cnn_digits.yaml", ["model_parallel.stages=3", "model_parallel.split_points=[conv1, dense0]"]
    )
    stages = plan_stages(cfg)
    assert [s.names[0] for s in stages] == ["conv0", "conv1", "dense0"]
    assert stages[1].input_shape == (4, 4, 8)  # a conv activation crosses the first boundary
    # forward activations and backward gradients, fp32, global batch 32
    assert boundary_bytes_per_step(stages, 32) == 2 * (4 * 4 * 8 + 64) * 32 * 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model_parallel.split_points=[dense7]"], "no layer 'dense7' to split at"),
        (["model_parallel.stages=3"], "stages 3 is more than the model's 2 layers with weights"),
        (["model_parallel.stages=3", "model_parallel.split_points=[dense1]"], "need 2 split_points"),
    ],
)
def test_bad_splits(overrides, message):
    with pytest.raises(UserError, match=message):
        plan_stages(load_config(None, overrides))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--strategy", "model-parallel", "--set", "model_parallel.split_points=[dense9]"],
            "no layer 'dense9' to split at",
        ),
        (["--strategy", "pipeline", "--set", "model_parallel.stages=3"], "more than the model's 2 layers"),
        (
            ["--strategy", "pipeline", "--set", "model_parallel.micro_batches=5"],
            "micro_batches 5 does not divide training.global_batch 32",
        ),
        (
            [
                "--strategy",
                "hybrid",
                "--set",
                "parallel.oversubscribe=true",
                "--set",
                "model_parallel.micro_batches=32",
            ],
            "micro_batches 32 does not divide each replica's batch",
        ),
    ],
)
def test_bad_input_through_the_cli(tmp_path, args, message):
    assert_one_line_error(xfw_in_process("compare", *args, "--out", str(tmp_path)), message)


def test_more_stages_than_devices(tmp_path):
    stages = this_machine().devices + 1
    layers = "[" + ",".join(["10"] * (stages + 1)) + "]"
    proc = xfw_in_process(
        "compare",
        "--strategy",
        "model-parallel",
        "--set",
        f"model.layers={layers}",
        "--set",
        f"model_parallel.stages={stages}",
        "--out",
        str(tmp_path),
    )
    assert_one_line_error(proc, f"{stages} stages but this machine has")


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


@pytest.mark.frameworks
def test_model_parallel_parity(tmp_path):
    proc = run_xfw("compare", "--strategy", "model-parallel", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = check_parity(load_summary(tmp_path), {"tf-placed-stages", "torch-send-recv"})
    assert runs["torch-send-recv"]["processes"] == 2
    assert runs["torch-send-recv"]["model_parallel"]["boundary_bytes_per_step"] == 2 * 50 * 32 * 4
    if this_machine().gpus < 2:
        assert runs["torch-placed-stages"]["status"] == "skipped" and "GPUs" in runs["torch-placed-stages"]["reason"]
    assert "stages (busy" in proc.stdout


@pytest.mark.frameworks
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


@pytest.mark.frameworks
def test_hybrid_two_by_two_parity(tmp_path):
    proc = run_xfw("compare", "--strategy", "hybrid", "--set", "parallel.oversubscribe=true", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = check_parity(load_summary(tmp_path), {"tf-hybrid", "torch-hybrid"})
    assert runs["torch-hybrid"]["processes"] == 4 and runs["tf-hybrid"]["devices"] == 4
    # Each replica's block goes to its first stage: another device (TF), another process (torch, ranks 0 and 2).
    assert len({w["device"] for w in runs["tf-hybrid"]["work_split"]}) == 2
    assert [w["process"] for w in runs["torch-hybrid"]["work_split"]] == [0, 2]


@pytest.mark.frameworks
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
