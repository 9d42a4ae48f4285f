"""The runs Keras fit cannot do, skipped with the Keras bug that stops them, and a bad steps_per_execution refused in
one line; no worker starts. Fit against the custom loop, and the bugs shown to be still there:
tests/frameworks/test_keras_fit.py."""

import pytest

from tests.helpers.cli import assert_one_line_error, xfw_in_process
from xfw.common.plan.library_bugs import keras_fit_mirrored_bug, keras_fit_multi_worker_bug
from xfw.common.plan.machine import this_machine
from xfw.common.plan.refusals import model_unsupported, unavailable_reason
from xfw.common.plan.registry import find
from xfw.common.spec.config import Config


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


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("training.steps_per_execution=0", "training.steps_per_execution"),
        ("training.steps_per_execution=50", "timing_windows x steps_per_execution (10 x 50)"),
    ],
)
def test_a_bad_steps_per_execution_is_one_line(setting, expected):
    assert_one_line_error(xfw_in_process("compare", "--strategy", "single", "--set", setting), expected)
