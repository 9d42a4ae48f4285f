"""Mixed precision (runtime.precision) and each framework's compiler (runtime.compile): a setting that does not exist
is one line, and a run that cannot take a setting is skipped with the reason (an in-process compare in which every
run is skipped, so no worker starts). The runs: tests/frameworks/test_precision.py."""

import pytest

from tests.helpers.cli import assert_one_line_error, load_summary, xfw_in_process


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("runtime.precision=fp16", "runtime.precision"),
        ("runtime.compile=maybe", "runtime.compile"),
        ("parity.mixed_bfloat16.same_framework=0", "parity.mixed_bfloat16.same_framework"),
    ],
)
def test_a_precision_or_compiler_that_does_not_exist_is_one_line(setting, expected):
    assert_one_line_error(xfw_in_process("compare", "--strategy", "single", "--set", setting), expected)


@pytest.mark.parametrize(
    "args, env, reason",
    [
        (
            (
                *("--strategy", "shared-device", "--config", "configs/shared_device.yaml"),
                *("--set", "shared_device.hidden_widths=[16]", "--only", "torch-shared-threads"),
                *("--set", "runtime.precision=mixed_bfloat16"),
            ),
            {},
            "runtime.precision mixed_bfloat16 applies to single-device and data-parallel runs",
        ),
        (
            ("--strategy", "single", "--only", "torch-single", "--set", "runtime.compile=true"),
            {"CXX": "/nonexistent/c++"},
            "torch.compile (inductor) needs a C++ compiler and finds none (/nonexistent/c++ is not on PATH",
        ),
    ],
    ids=["precision-on-several-networks", "inductor-without-a-compiler"],
)
def test_a_run_that_cannot_take_a_setting_is_skipped_with_the_reason(tmp_path, monkeypatch, args, env, reason):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    proc = xfw_in_process("compare", *args, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    runs = load_summary(tmp_path)["runs"]  # the run asked for, and its reference where that is another
    assert runs and all(r["status"] == "skipped" and reason in r["reason"] for r in runs), runs
