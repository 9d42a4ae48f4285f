"""The idiomatic Keras path: model.compile + model.fit as implementations of the single and mirrored strategies,
held to the custom loop's float32 tolerance; the runs Keras cannot do skipped with the Keras bug that stops them,
and that bug shown to be still there."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, load_summary, run_xfw, xfw_in_process

from xfw.common.plan.launch import free_ports
from xfw.common.plan.registry import (
    find,
    keras_fit_mirrored_bug,
    keras_fit_multi_worker_bug,
    model_unsupported,
    this_machine,
    unavailable_reason,
)
from xfw.common.spec.config import Config

pytestmark = pytest.mark.frameworks
BUGS = str(Path(__file__).with_name("keras_fit_bugs.py"))


def test_fit_matches_the_custom_loop_with_several_steps_per_execution(tmp_path):
    proc = run_xfw(
        "compare",
        *("--strategy", "single", "--only", "tf-fit", "--only", "tf-single"),
        *(
            "--set",
            "training.steps=60",
            "--set",
            "training.steps_per_execution=4",
            "--set",
            "training.timing_windows=5",
        ),
        *("--out", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = load_summary(tmp_path)
    runs = {r["id"]: r for r in summary["runs"]}
    (judged,) = summary["comparisons"]
    assert (judged["a"], judged["b"]) == ("tf-fit", "tf-single")
    assert judged["within_tolerance"] and judged["tolerance"] == 1e-5, judged
    fit = runs["tf-fit"]
    assert len(fit["loss"]) == 60  # every step's loss, not one per execution
    # warm-up and timing windows are whole executions of 4 steps: 12 warm-up steps cover the configured 10
    assert fit["warmup_steps"] == 12
    assert fit["input_wait_s_per_step"] is None  # inside fit's compiled loop: not measured, shown as "-"


def test_the_skipped_fit_runs_name_the_keras_bug():
    machine = this_machine()
    spe2 = Config.model_validate({"training": {"steps_per_execution": 2}})
    mirrored_reason = unavailable_reason(find("tf", "fit-mirrored"), machine, 2, spe2)
    assert mirrored_reason == keras_fit_mirrored_bug(spe2)
    assert unavailable_reason(find("tf", "fit-mirrored"), machine, 2, Config()) is None
    assert unavailable_reason(find("tf", "fit-multi-worker"), machine, 2, Config()) == keras_fit_multi_worker_bug()
    if keras_fit_multi_worker_bug() is not None:
        assert "keras-team/keras#20585" in keras_fit_multi_worker_bug()
        assert "keras-team/keras#19246" in mirrored_reason and "steps_per_execution=1" in mirrored_reason
    accumulating = Config.model_validate({"training": {"accumulation_steps": 2}})
    assert "one batch per optimizer update" in model_unsupported(find("tf", "fit"), accumulating)


@pytest.mark.skipif(
    keras_fit_mirrored_bug(Config.model_validate({"training": {"steps_per_execution": 2}})) is None,
    reason="the installed Keras is newer than the last one seen with the bug",
)
def test_the_keras_bugs_are_still_there():
    """Where this fails, the installed Keras trains these: raise common.registry.KERAS_FIT_LAST_BROKEN's
    assumption (the skips would hide runs that work)."""
    mirrored = subprocess.run([sys.executable, BUGS, "mirrored-steps-per-execution"], capture_output=True, text=True)
    assert mirrored.returncode != 0 and "You must feed a value for placeholder tensor" in mirrored.stderr
    ports = [str(p) for p in free_ports(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, BUGS, "multi-worker", str(i), *ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outcomes = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode != 0 for w in workers), outcomes
    assert all(
        "unsupported type (<class 'tensorflow.python.distribute.values.PerReplica'>)" in err for _, err in outcomes
    ), [err[-2000:] for _, err in outcomes]


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("training.steps_per_execution=0", "training.steps_per_execution"),
        ("training.steps_per_execution=50", "timing_windows x steps_per_execution (10 x 50)"),
    ],
)
def test_a_bad_steps_per_execution_is_one_line(setting, expected):
    assert_one_line_error(xfw_in_process("compare", "--strategy", "single", "--set", setting), expected)
