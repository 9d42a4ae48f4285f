"""Model parallelism, pipelining and hybrid data x model parallelism: the split (no framework) and bad input through
the CLI, refused before any worker starts. Parity of every implementation: tests/frameworks/test_model_parallel.py."""

import pytest

from tests.helpers.cli import assert_one_line_error, xfw_in_process
from xfw.common.errors import UserError
from xfw.common.plan.machine import this_machine
from xfw.common.spec.config import load_config
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
