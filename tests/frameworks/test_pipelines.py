"""Native input pipelines (data.pipeline native): tf.data distributed by each strategy, and a DataLoader with a
DistributedSampler that yields xfw's order, feed every data-parallel implementation the samples the preloaded runs
index, so their losses match; each run reports how long its steps waited for input."""

import numpy as np
import pytest
from conftest import assert_one_line_error, load_summary, run_xfw, xfw_in_process

from xfw.common.plan.registry import find, model_unsupported
from xfw.common.spec.config import Config

pytestmark = pytest.mark.frameworks
STEPS = 40


def max_rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float((np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))).max())


def test_native_pipelines_feed_every_data_parallel_run_what_the_preloaded_runs_index(tmp_path, mirrored):
    proc = run_xfw(
        "compare",
        *("--strategy", "mirrored", "--set", "data.pipeline=native", "--set", f"training.steps={STEPS}"),
        *("--out", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    native = {r["id"]: r for r in load_summary(tmp_path)["runs"] if r["status"] == "ok"}
    preloaded = {r["id"]: r for r in mirrored[1]["runs"] if r["status"] == "ok"}
    assert set(native) == set(preloaded), (set(native), set(preloaded))
    for run_id, run in native.items():
        assert run["env"]["data_pipeline"]["kind"] == "native"
        # the order does not depend on the run's length: the first steps of the 300-step preloaded run
        assert max_rel(run["loss"], preloaded[run_id]["loss"][:STEPS]) <= 1e-5, run_id
        if not run_id.startswith("tf-fit"):
            assert run["input_wait_s_per_step"] > 0, run_id  # measured, not assumed
    report = (tmp_path / "report.md").read_text()
    assert "| input ms |" in report and "(native)" in report


def test_loader_workers_and_accumulated_micro_batches(tmp_path):
    """A DataLoader with a worker process, and native batches cut into micro-batches inside the step."""
    proc = run_xfw(
        "compare",
        *("--strategy", "mirrored", "--only", "tf-mirrored-strategy", "--only", "torch-ddp"),
        *("--set", "data.pipeline=native", "--set", "data.workers=1", "--set", "training.accumulation_steps=2"),
        *("--set", "training.steps=30", "--out", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = load_summary(tmp_path)
    assert all(r["status"] == "ok" for r in summary["runs"]), [r.get("error") for r in summary["runs"]]
    assert all(r["env"]["data_pipeline"]["workers"] == 1 for r in summary["runs"])
    assert summary["comparisons"] and all(c["within_tolerance"] for c in summary["comparisons"])


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
