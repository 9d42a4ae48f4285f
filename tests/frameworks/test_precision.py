"""Each framework at its best: mixed precision (runtime.precision) and its own compiler (runtime.compile), as
matched settings of single-device and data-parallel runs, held to the tolerances the config states for them (bad
settings and skipped runs: tests/unit/test_precision_settings.py)."""

from tests.helpers.cli import load_summary, run_xfw
from xfw.common.spec.config import Config

STEPS = "training.steps=100"


def compare(tmp_path, *args: str) -> dict:
    proc = run_xfw("compare", *args, "--set", STEPS, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return load_summary(tmp_path)


def test_bfloat16_data_parallel_runs_hold_the_bfloat16_tolerances_in_both_frameworks(tmp_path):
    summary = compare(
        tmp_path,
        *("--strategy", "mirrored", "--set", "runtime.precision=mixed_bfloat16"),
        *("--only", "tf-mirrored-strategy", "--only", "torch-ddp"),  # and their references, the single runs
    )
    runs = {r["id"]: r for r in summary["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    tolerances = Config().parity.mixed_bfloat16
    judged = {(c["a"], c["b"]): c for c in summary["comparisons"] if c["status"] == "ok"}
    assert judged[("tf-mirrored-strategy", "tf-single")]["tolerance"] == tolerances.same_framework
    assert judged[("tf-single", "torch-single")]["tolerance"] == tolerances.cross_framework
    assert all(c["within_tolerance"] for c in judged.values()), judged
    # bfloat16 really ran: the frameworks round at different places, far beyond float32's 1e-5 ...
    assert judged[("tf-single", "torch-single")]["max_rel_loss_diff"] > 1e-5
    # ... and the peak its utilisation is measured against is a bfloat16 matmul's.
    assert runs["torch-ddp"]["flops"]["peak"]["setting"]["precision"] == "bfloat16"
    assert runs["tf-single"]["env"]["precision"] == "mixed_bfloat16"
    assert "mixed_precision" in runs["tf-single"]["env"]["semantics"]


def test_float16_scales_the_loss_the_same_way_in_both_frameworks_and_in_keras_fit(tmp_path):
    summary = compare(tmp_path, "--strategy", "single", "--set", "runtime.precision=mixed_float16")
    runs = {r["id"]: r for r in summary["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    assert "LossScaleOptimizer" in runs["tf-single"]["env"]["hyperparameters"]["optimizer"]["loss_scale"]
    assert "GradScaler" in runs["torch-single"]["env"]["hyperparameters"]["optimizer"]["loss_scale"]
    judged = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    tolerances = Config().parity.mixed_float16
    assert judged[("tf-single", "torch-single")]["tolerance"] == tolerances.cross_framework
    assert judged[("tf-fit", "tf-single")]["tolerance"] == tolerances.same_framework
    assert all(c["within_tolerance"] for c in judged.values()), judged


def test_compiled_runs_keep_float32_parity(tmp_path):
    """XLA (custom loop and Keras fit's jit_compile) and inductor fuse and reorder, and still agree with each other
    within the float32 tolerance; the compile time is in the warm-up, apart from the timed steps."""
    summary = compare(tmp_path, "--strategy", "single", "--set", "runtime.compile=true")
    runs = {r["id"]: r for r in summary["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    assert all(r["env"]["compile"] for r in runs.values())
    judged = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    assert set(judged) == {("tf-fit", "tf-single"), ("tf-single", "torch-single")}
    assert all(c["within_tolerance"] and c["tolerance"] == 1e-5 for c in judged.values()), judged
