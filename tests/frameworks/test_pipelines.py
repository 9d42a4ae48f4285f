"""Native input pipelines (data.pipeline native): tf.data distributed by each strategy, and a DataLoader with a
DistributedSampler that yields xfw's order, feed every data-parallel implementation the samples the preloaded runs
index, so their losses match; each run reports how long its steps waited for input (bad settings:
tests/unit/test_pipeline_settings.py)."""

from tests.helpers.cli import load_summary, run_xfw
from tests.helpers.curves import max_rel

STEPS = 40


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
