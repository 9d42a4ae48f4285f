"""`xfw localize`: an injected one-weight difference is found exactly (which parameter, which element), in either
framework's copy and in a data-parallel run's replicas; runs at parity are said to never part; the ResNet's relu
curves part where a unit within rounding of zero switches; per-replica BatchNorm statistics are shown to be the
cause by a synchronised replay; bad input is refused in one line (the last check trains two short runs, so it is
here). The kink, padding and rounding checks on constructed tensors: tests/unit/test_localize_checks.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.cli import assert_one_line_error, run_xfw, xfw_in_process


def localize(tmp_path, *args: str, env: dict | None = None) -> tuple[object, dict]:
    out = tmp_path / "loc"
    proc = run_xfw("localize", *args, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((out / "localize.json").read_text())


@pytest.mark.parametrize(
    ("perturbed", "parameter", "index", "shape"),
    [("torch-single", "dense1/kernel", 7, (50, 10)), ("tf-single", "dense0/kernel", 123, (10, 50))],
)
def test_an_injected_weight_difference_is_found_exactly(tmp_path, perturbed, parameter, index, shape):
    env = {"XFW_PERTURB": f"{perturbed}:{parameter}:{index}:1e-4"}
    proc, result = localize(tmp_path, "tf-single", "torch-single", "--set", "training.steps=20", env=env)
    assert result["parted"] and result["first_step"] == 0
    first = result["first"]
    assert (first["kind"], first["name"]) == ("weights", parameter)
    assert first["at"] == [int(i) for i in np.unravel_index(index, shape)]
    # the other parameters start equal: only the perturbed one is over the tolerance at step 0
    table = {(t["kind"], t["name"]): t["relative"] for t in result["tables"]}
    over = [k for k, v in table.items() if k[0] == "weights" and v["0"] > result["tolerance"]]
    assert over == [("weights", parameter)]
    assert f"first parted at step 0, weights {parameter}" in proc.stdout


@pytest.mark.parametrize(
    ("a", "b", "perturbed", "parameter", "index", "shape"),
    [
        ("tf-single", "torch-ddp", "torch-ddp", "dense1/kernel", 7, (50, 10)),
        ("tf-mirrored-strategy", "torch-single", "tf-mirrored-strategy", "dense0/kernel", 123, (10, 50)),
    ],
)
def test_an_injected_difference_is_found_in_every_replica(tmp_path, a, b, perturbed, parameter, index, shape):
    env = {"XFW_PERTURB": f"{perturbed}:{parameter}:{index}:1e-4"}
    proc, result = localize(tmp_path, a, b, "--set", "training.steps=20", env=env)
    assert result["replicas"] == ([1, 2] if a.endswith("single") else [2, 1])
    assert result["parted"] and result["first_step"] == 0
    first = result["first"]
    assert (first["kind"], first["name"], first["replica"]) == ("weights", parameter, 0)
    assert first["at"] == [int(i) for i in np.unravel_index(index, shape)]
    table = {(t["kind"], t["name"], t["replica"]): t["relative"] for t in result["tables"]}
    over = {k for k, v in table.items() if k[0] == "weights" and v["0"] > result["tolerance"]}
    assert over == {("weights", parameter, 0), ("weights", parameter, 1)}  # both replicas hold the moved weight
    # each replica's block outputs were compared with the rows of the one-device run that are its block
    assert {k[2] for k in table if k[0] == "activation"} == {0, 1}
    assert f"first parted at step 0, weights {parameter} (replica 0)" in proc.stdout


def test_data_parallel_replicas_at_parity_never_part(tmp_path):
    proc, result = localize(tmp_path, "tf-mirrored-strategy", "torch-ddp", "--set", "training.steps=20")
    assert result["parted"] is False and result["replicas"] == [2, 2]


def test_per_replica_batchnorm_statistics_are_found_by_a_synchronised_replay(tmp_path):
    proc, result = localize(
        tmp_path,
        "torch-single",
        "torch-ddp",
        "--config",
        "configs/resnet.yaml",
        "--set",
        "model.sync_batchnorm=false",
        "--set",
        "model.widths=[4,8,8]",
        "--set",
        "training.steps=20",
    )
    assert result["parted"] and result["first_step"] == 0
    assert (result["first"]["kind"], result["first"]["name"]) == ("activation", "stem")
    check = result["batchnorm"]
    assert check["relative"] > result["tolerance"] >= check["relative_synchronised"]
    assert "BatchNorm statistics per replica" in proc.stdout


def test_runs_at_parity_never_part(tmp_path):
    proc, result = localize(tmp_path, "tf-single", "torch-single", "--set", "training.steps=30")
    assert result["parted"] is False and result["first_step"] is None
    assert "never part by more than 1e-05 in 30 steps" in proc.stdout


def test_resnet_relu_curves_part_at_a_unit_within_rounding_of_zero(tmp_path):
    _, result = localize(
        tmp_path,
        "tf-single",
        "torch-single",
        "--config",
        "configs/resnet.yaml",
        "--set",
        "model.activation=relu",
        "--set",
        "training.steps=20",
    )
    assert result["parted"], result["verdict"]
    assert result["relu"], result["explanation"]  # the check ran and found the switched units
    for flips in result["relu"]:
        assert 0 < flips["flipped"] < flips["units"] / 1000
        assert flips["largest_flipped_value"] <= 1e-4 * flips["median_active_value"]
    assert "within rounding of zero" in result["explanation"]
    # before the step they part at, the weights agree: it is that step's kink, not an earlier difference
    assert result["first"]["kind"] != "weights"


def test_compare_localize_finds_adams_epsilon_placement(tmp_path):
    """configs/adam.yaml fails TF vs torch by design; compare --localize replays the pair and puts the answer in the
    report, from the check that recomputes Adam's update both ways."""
    out = tmp_path / "cmp"
    args = ("--strategy", "single", "--config", "configs/adam.yaml", "--set", "training.steps=40")
    proc = run_xfw("compare", *args, "--localize", "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # the comparison fails; localising it does not change that
    summary = json.loads((out / "summary.json").read_text())
    [pair] = summary["localizations"]
    assert (pair["a"], pair["b"]) == ("tf-single", "torch-single")
    result = json.loads((out / pair["folder"] / "localize.json").read_text())
    assert result["parted"] and result["first"]["kind"] == "update"  # same gradients and moments, other updates
    check = result["adam"]
    assert min(check["a_error"], key=check["a_error"].get) == "keras"  # tf-single: Keras's formula
    assert min(check["b_error"], key=check["b_error"].get) == "torch"
    assert check["a_error"]["keras"] < result["tolerance"] < check["formulas_differ"]
    assert "Adam's epsilon is placed differently" in pair["verdict"] and pair["verdict"] in proc.stdout
    report = (out / "report.md").read_text()
    assert "## Where the failing curves part" in report and pair["verdict"] in report


def test_localize_refuses_bad_input(tmp_path):
    assert_one_line_error(xfw_in_process("localize", "tf-single", "torch-horovod"), "not torch-horovod")
    beyond = xfw_in_process("localize", "tf-single", "torch-single", "--set", "training.steps=30", "--at", "30")
    assert_one_line_error(beyond, "--at 30 is not a step of the run (steps 0..29)")
    compiled = xfw_in_process("localize", "tf-single", "torch-single", "--set", "runtime.compile=true")
    assert_one_line_error(compiled, "localize replays eager steps")
    assert_one_line_error(xfw_in_process("localize", "tf-single", "torch-sngle"), "'torch-sngle' is neither")
    mixed = xfw_in_process("localize", "tf-single", "torch-single", "--set", "runtime.precision=mixed_bfloat16")
    assert_one_line_error(mixed, "localize replays float32 runs")
    assert_one_line_error(xfw_in_process("localize", str(tmp_path), "torch-single"), "no result.json there")
    a, b = tmp_path / "a", tmp_path / "b"
    for out, steps in ((a, 20), (b, 30)):
        proc = run_xfw(
            "run", "--framework", "torch", "--impl", "single", "--set", f"training.steps={steps}", "--out", str(out)
        )
        assert proc.returncode == 0, proc.stderr
    assert_one_line_error(run_xfw("localize", str(a), str(b)), "configs differ")
