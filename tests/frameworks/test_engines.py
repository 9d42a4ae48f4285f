"""Engine options (parallel.engine): passed through to DDP, Horovod and TensorFlow's collectives, recorded with
each run, held to the tolerance they allow (unknown options refused by name: tests/unit/test_engine_options.py)."""

import pytest

from tests.helpers.cli import load_summary, run_xfw
from xfw.common.spec.config import Config

OPTIONS = [
    "parallel.engine.ddp.bucket_cap_mb=1",
    "parallel.engine.ddp.gradient_as_bucket_view=true",
    "parallel.engine.ddp.static_graph=true",
    "parallel.engine.horovod.fusion_threshold_mb=0",
    "parallel.engine.horovod.cycle_time_ms=2",
    "parallel.engine.horovod.compression=fp16",
    "parallel.engine.tf_collective.implementation=ring",
    "parallel.engine.tf_collective.bytes_per_pack=1024",
]


def test_engine_options_reach_the_engines_and_are_recorded(tmp_path):
    only = [a for impl in ("torch-ddp", "tf-horovod", "torch-horovod", "tf-multi-worker") for a in ("--only", impl)]
    proc = run_xfw(
        "compare",
        *("--strategy", "mirrored", *only, "--set", "training.steps=40"),
        *[a for o in OPTIONS for a in ("--set", o)],
        *("--out", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = load_summary(tmp_path)
    runs = {r["id"]: r for r in summary["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    engines = {run_id: r["env"]["engine"] for run_id, r in runs.items()}
    assert engines["torch-ddp"] == {
        "name": "ddp",
        "options": {"bucket_cap_mb": 1.0, "gradient_as_bucket_view": True, "static_graph": True},
    }
    assert engines["tf-multi-worker"]["options"] == {"implementation": "ring", "bytes_per_pack": 1024}
    assert engines["tf-single"] is None  # a single-device run drives no engine
    for run_id in ("tf-horovod", "torch-horovod"):
        assert engines[run_id]["options"]["compression"] == "fp16"
        # horovodrun turned its flags into the settings Horovod reads
        assert runs[run_id]["env"]["env_vars"]["HOROVOD_FUSION_THRESHOLD"] == "0"
        assert float(runs[run_id]["env"]["env_vars"]["HOROVOD_CYCLE_TIME"]) == 2.0
    judged = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    f16 = Config().parity.mixed_float16
    for fw in ("tf", "torch"):
        compressed = judged[(f"{fw}-horovod", f"{fw}-single")]
        assert compressed["tolerance"] == f16.same_framework and "float16 gradients" in compressed["note"]
        # the float16 rounding of the gradients shows, beyond float32's noise (~1e-7 here)
        assert compressed["max_rel_loss_diff"] > 2e-6, compressed
    assert judged[("torch-ddp", "torch-single")]["tolerance"] == 1e-5
    assert all(c["within_tolerance"] for c in judged.values()), judged


@pytest.mark.parametrize("hook", ["fp16", "powersgd"])
def test_ddp_communication_hooks_compress_the_gradients(tmp_path, hook):
    """fp16: held to the float16 tolerance, and the rounding shows; PowerSGD (rank 1): another algorithm, shown
    against one device but not judged, and parting from it by far more than rounding."""
    proc = run_xfw(
        "compare",
        *("--strategy", "mirrored", "--only", "torch-ddp", "--set", "training.steps=40"),
        *("--set", f"parallel.engine.ddp.comm_hook={hook}", "--out", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = load_summary(tmp_path)
    ddp = next(r for r in summary["runs"] if r["id"] == "torch-ddp")
    assert ddp["env"]["engine"]["options"] == {"comm_hook": hook}
    judged = next(c for c in summary["comparisons"] if (c["a"], c["b"]) == ("torch-ddp", "torch-single"))
    if hook == "fp16":
        assert judged["tolerance"] == Config().parity.mixed_float16.same_framework and judged["within_tolerance"]
        assert judged["max_rel_loss_diff"] > 2e-6  # float16's rounding, beyond float32's noise
    else:
        assert judged["kind"] == "not_judged" and "rank-1 PowerSGD approximation" in judged["note"]
        assert judged["max_rel_loss_diff"] > 1e-3
