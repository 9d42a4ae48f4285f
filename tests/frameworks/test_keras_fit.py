"""The idiomatic Keras path: model.compile + model.fit as implementations of the single and mirrored strategies,
held to the custom loop's float32 tolerance, and the Keras bugs its skipped runs name shown to be still there (the
skips and the refusals themselves: tests/unit/test_keras_fit_refusals.py)."""

import subprocess
import sys

import pytest

from tests.helpers.cli import ROOT, load_summary, run_xfw
from xfw.common.plan.launch import free_ports
from xfw.common.plan.library_bugs import keras_fit_mirrored_bug
from xfw.common.spec.config import Config

BUGS = str(ROOT / "tests" / "helpers" / "keras_fit_bugs.py")


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
