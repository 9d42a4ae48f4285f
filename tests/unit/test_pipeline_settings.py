"""Native input pipelines (data.pipeline native): a bad pipeline setting is one line, and the runs without whole-model
steps say that the pipeline does not apply; no worker starts. The pipelines feeding the runs:
tests/frameworks/test_pipelines.py."""

import pytest

from tests.helpers.cli import assert_one_line_error, xfw_in_process
from xfw.common.plan.refusals import model_unsupported
from xfw.common.plan.registry import find
from xfw.common.spec.config import Config


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("data.workers=2", "data.workers applies to data.pipeline native only"),
        ("data.pin_memory=false", "data.pin_memory applies to data.pipeline native only"),
        ("data.pipeline=streaming", "data.pipeline"),
        ("data.prefetch=0", "data.prefetch"),
    ],
)
def test_a_bad_pipeline_setting_is_one_line(setting, expected):
    assert_one_line_error(xfw_in_process("compare", "--strategy", "single", "--set", setting), expected)


def test_runs_without_whole_model_steps_say_the_pipeline_does_not_apply():
    native = Config.model_validate({"data": {"pipeline": "native"}})
    assert model_unsupported(find("torch", "send-recv"), native) == (
        "data.pipeline native applies to single-device and data-parallel runs"
    )
    assert model_unsupported(find("torch", "ddp"), native) is None
    # the loader's defaults are written into the resolved config, which validates again as it is
    assert Config.model_validate(native.model_dump(mode="json")).data.workers == 0
