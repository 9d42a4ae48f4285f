"""Bad input: one line naming the problem, exit status 2, no traceback (through the real `xfw` command)."""

import pytest

from tests.helpers.cli import assert_one_line_error, run_xfw, xfw_in_process
from xfw.common.plan.machine import this_machine


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("training: {steps: [1\n", "malformed YAML"),
        ("trainng:\n  steps: 3\n", "unknown config key 'trainng'"),
        ("model: {kind: vit}\n", "model.kind: unknown value 'vit'"),
        ("data: {kind: cifar}\n", "data.kind"),
        ("training: {global_batch: 33}\n", "global_batch 33 is not divisible by parallel.replicas 2"),
    ],
)
def test_bad_config_file(tmp_path, yaml_text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    assert_one_line_error(
        xfw_in_process("compare", "--strategy", "mirrored", "--config", str(cfg), "--out", str(tmp_path)), expected
    )


def test_unknown_strategy():
    assert_one_line_error(
        xfw_in_process("compare", "--strategy", "pipelined-mirrors"), "unknown strategy 'pipelined-mirrors'"
    )


def test_unknown_framework_and_implementation():
    assert_one_line_error(xfw_in_process("run", "--framework", "jax", "--impl", "single"), "unknown framework 'jax'")
    assert_one_line_error(
        xfw_in_process("run", "--framework", "torch", "--impl", "zero3"), "unknown implementation 'zero3'"
    )


def test_missing_npz(tmp_path):
    proc = xfw_in_process(
        "run",
        "--framework",
        "torch",
        "--impl",
        "single",
        "--set",
        "data.kind=npz",
        "--set",
        f"data.path={tmp_path / 'gone.npz'}",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(proc, "no such file")


def test_more_replicas_than_devices(tmp_path):
    too_many = this_machine().devices + 1
    proc = xfw_in_process(
        "compare",
        "--strategy",
        "mirrored",
        "--replicas",
        str(too_many),
        "--set",
        f"training.global_batch={32 * too_many}",
        "--out",
        str(tmp_path),
    )
    assert_one_line_error(proc, f"{too_many} replicas but this machine has")


def test_missing_config_file_and_bad_option(tmp_path):
    assert_one_line_error(
        xfw_in_process("compare", "--strategy", "mirrored", "--config", str(tmp_path / "x.yaml")), "cannot read config"
    )
    assert_one_line_error(xfw_in_process("compare", "--strategy", "mirrored", "--repeats", "0"), "--repeats")


def test_horovod_not_installed(tmp_path):
    # A `horovod` package without compiled extensions, first on the path: what a machine without a
    # Horovod build looks like to xfw.
    fake = tmp_path / "horovod"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    proc = run_xfw(
        "run",
        "--framework",
        "torch",
        "--impl",
        "horovod",
        "--out",
        str(tmp_path / "o"),
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert_one_line_error(proc, "Horovod is not installed with PyTorch support")
