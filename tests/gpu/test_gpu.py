"""GPU paths: one GPU (the arithmetic of a GPU run, processes sharing it, honest utilisation and memory), and two
GPUs (NCCL, one device per replica, nn.DataParallel). Skipped with the reason where the GPUs are missing; run
them all at once with scripts/gpu_check.sh."""

import json

import numpy as np
import pytest

from tests.helpers.cli import load_summary, run_xfw
from xfw.common.plan.machine import this_machine

machine = this_machine()
one_gpu = pytest.mark.skipif(machine.gpus < 1, reason="needs an NVIDIA GPU, this machine has none")
two_gpus = pytest.mark.skipif(machine.gpus < 2, reason=f"needs 2 NVIDIA GPUs, this machine has {machine.gpus}")
torch_installed = pytest.mark.skipif("torch" not in machine.frameworks, reason="PyTorch is not installed")

STEPS = 200


def result(out) -> dict:
    return json.loads((out / "result.json").read_text())


def ok_runs(summary: dict, framework: str) -> dict:
    """The framework's runs that ran (TensorFlow's are skipped where it is not installed, as on a bare GPU box)."""
    return {r["id"]: r for r in summary["runs"] if r["framework"] == framework}


@one_gpu
@torch_installed
def test_torch_on_the_gpu_follows_the_cpu_curve(tmp_path):
    """The default config, torch-single on the GPU and (GPU hidden) on the CPU: the same curve within 1e-5."""
    steps = f"training.steps={STEPS}"
    gpu = run_xfw("run", "--framework", "torch", "--impl", "single", "--set", steps, "--out", str(tmp_path / "gpu"))
    cpu = run_xfw(
        "run",
        *("--framework", "torch", "--impl", "single", "--set", steps, "--out", str(tmp_path / "cpu")),
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert gpu.returncode == 0 and cpu.returncode == 0, gpu.stderr[-2000:] + cpu.stderr[-2000:]
    on_gpu, on_cpu = result(tmp_path / "gpu"), result(tmp_path / "cpu")
    assert "cuda" in on_gpu["env"]["devices"][0] and on_gpu["device_memory"]["peak_bytes"] > 0
    assert on_cpu["device_memory"] is None and "cuda" not in on_cpu["env"]["devices"][0]
    a, b = np.array(on_gpu["loss"]), np.array(on_cpu["loss"])
    relative = np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))
    assert relative.max() <= 1e-5, (relative.max(), int(relative.argmax()))


@one_gpu
@torch_installed
def test_processes_threads_and_streams_sharing_one_gpu_match_sequential(tmp_path):
    """Two networks on one GPU: threads, CUDA streams and processes (a gloo group: NCCL refuses two ranks on one
    GPU) compute exactly what the networks compute one after another."""
    proc = run_xfw(
        "compare",
        *("--strategy", "shared-device", "--config", "configs/shared_device.yaml"),
        *("--set", f"training.steps={STEPS}", "--set", "shared_device.hidden_widths=[128]", "--out", str(tmp_path)),
    )
    summary = load_summary(tmp_path)
    runs = ok_runs(summary, "torch")
    reference = runs["torch-shared-sequential@h128"]
    assert reference["status"] == "ok", reference.get("error")
    for impl in ("shared-threads", "shared-cuda-streams", "shared-processes"):
        r = runs[f"torch-{impl}@h128"]
        assert r["status"] == "ok", (impl, r.get("error"), proc.stdout[-2000:])
        assert [n["loss"] for n in r["networks"]] == [n["loss"] for n in reference["networks"]], impl
        assert r["device_memory"]["peak_bytes"] > 0 and len(r["device_memory"]["per_process"]) == r["processes"]
    assert runs["torch-shared-processes@h128"]["env"]["process_group_backend"] == "gloo"


@one_gpu
@torch_installed
def test_replicas_sharing_one_gpu_train_on_gloo_like_one_device(tmp_path):
    """More replicas than GPUs (parallel.oversubscribe): DDP and the hand-written all-reduce run on gloo, which
    all-reduces CUDA tensors, and follow torch-single; the backend is recorded and shown."""
    proc = run_xfw(
        "compare",
        *("--strategy", "mirrored", "--set", f"training.steps={STEPS}", "--set", "parallel.oversubscribe=true"),
        *("--out", str(tmp_path)),
    )
    summary = load_summary(tmp_path)
    runs = ok_runs(summary, "torch")
    for impl in ("torch-ddp", "torch-allreduce"):
        assert runs[impl]["status"] == "ok", (impl, runs[impl].get("error"))
        assert runs[impl]["env"]["process_group_backend"] == "gloo"
        assert len(runs[impl]["device_memory"]["per_process"]) == 2
    judged = [
        c for c in summary["comparisons"] if c["a"] in ("torch-ddp", "torch-allreduce") and c["b"] == "torch-single"
    ]
    assert len(judged) == 2 and all(c["within_tolerance"] for c in judged), proc.stdout[-3000:]
    assert "gloo (ranks share a GPU)" in (tmp_path / "report.md").read_text()  # the table's notes


@one_gpu
@torch_installed
@pytest.mark.parametrize(
    "setting",
    [
        "runtime.precision=mixed_bfloat16",
        "runtime.precision=mixed_float16",
        "runtime.compile=true",
        "data.pipeline=native",
    ],
)
def test_each_best_setting_runs_on_the_gpu(tmp_path, setting):
    """Mixed precision (float16 with loss scaling), torch.compile and a DataLoader with pinned memory on a GPU: DDP
    (two ranks sharing the GPU) against torch-single within the setting's tolerance, each step split by the
    profiler, GPU memory reported."""
    proc = run_xfw(
        "compare",
        *("--strategy", "mirrored", "--only", "torch-ddp", "--set", "parallel.oversubscribe=true"),
        *("--set", setting, "--set", f"training.steps={STEPS}", "--out", str(tmp_path)),
    )
    summary = load_summary(tmp_path)
    runs = ok_runs(summary, "torch")
    for run in runs.values():
        assert run["status"] == "ok", (run["id"], run.get("error"), proc.stdout[-2000:])
        assert run["device_memory"]["peak_bytes"] > 0 and run["step_breakdown"]["compute_s"] > 0
    judged = [c for c in summary["comparisons"] if (c["a"], c["b"]) == ("torch-ddp", "torch-single")]
    assert len(judged) == 1 and judged[0]["within_tolerance"], judged
    if setting == "data.pipeline=native":
        assert runs["torch-ddp"]["env"]["data_pipeline"]["pin_memory"] is True
        assert runs["torch-ddp"]["input_wait_s_per_step"] > 0


@one_gpu
@torch_installed
@pytest.mark.parametrize("layers", ["[10,50,10]", "[1024,4096,4096,1024]"], ids=["default-mlp", "wide-mlp"])
def test_flop_utilisation_is_a_share_of_a_saturating_peak(tmp_path, layers):
    """Utilisation within (0, 1] for the default MLP (small but not shown as zero) and for a wide one that keeps
    the GPU busy; the peak says how it was measured, and the allocator's peak is reported beside RSS."""
    proc = run_xfw(
        "compare",
        *("--strategy", "single", "--set", f"model.layers={layers}", "--set", "training.global_batch=1024"),
        *("--set", f"training.steps={STEPS}", "--set", "data.samples=8192", "--out", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = ok_runs(load_summary(tmp_path), "torch")["torch-single"]
    assert 0 < run["flops"]["utilization"] <= 1, run["flops"]
    peak = run["flops"]["peak"]
    assert peak["setting"]["gpu"] and peak["setting"]["tf32"] is False, peak
    assert run["env"]["math_mode"]["matmul_fp32_precision"] == "ieee"
    assert run["device_memory"]["peak_bytes"] > 0
    assert "| 0.00% |" not in (tmp_path / "report.md").read_text()  # small, but not shown as zero


@two_gpus
def test_every_gpu_implementation_matches_single_device(tmp_path):
    proc = run_xfw("compare", "--strategy", "mirrored", "--out", str(tmp_path))
    summary = load_summary(tmp_path)
    runs = {r["id"]: r for r in summary["runs"]}
    assert runs["torch-data-parallel"]["status"] == "ok", runs["torch-data-parallel"].get("error")
    assert all(r["status"] == "ok" for r in summary["runs"]), [r.get("error") for r in summary["runs"]]
    assert any(
        "cuda" in d or "GPU" in d
        for d in runs["torch-ddp"]["env"]["devices"][0:1] + runs["tf-mirrored-strategy"]["env"]["devices"]
    )
    assert all(c["within_tolerance"] for c in summary["comparisons"]), proc.stdout[-3000:]
    assert runs["torch-ddp"]["env"]["process_group_backend"] == "nccl"
