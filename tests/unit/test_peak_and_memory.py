"""How xfw measures what its tables show beside the losses, on a made-up device: the peak FLOP rate (grown until
saturated, settled, cached per setting), GPU memory from the allocators, and which process group ranks that share
a GPU get. A CPU run's report: tests/frameworks/test_measurement.py; the rest on a GPU: tests/gpu/test_gpu.py."""

import json

import pytest

from xfw.common.plan.machine import Machine, gpu_of_rank, ranks_share_a_gpu
from xfw.common.plan.refusals import shared_gpu_refusal
from xfw.common.plan.registry import find
from xfw.common.spec.config import Config
from xfw.common.worker import peak
from xfw.common.worker.loop import device_memory, gpus_used


def fake_device(peak_rate: float, saturates_at: int, calls: list):
    """matmul_seconds of a device that reaches `peak_rate` from n = saturates_at on (less below)."""

    def matmul_seconds(n: int, count: int) -> float:
        calls.append(n)
        rate = peak_rate * min(1.0, (n / saturates_at) ** 2)
        return count * 2 * n**3 / rate

    return matmul_seconds


def test_the_peak_grows_the_matmul_until_the_device_is_saturated():
    calls = []
    rate, n = peak.saturating_rate(fake_device(50e12, 4096, calls), peak.GPU_SIZES)
    assert rate == pytest.approx(50e12) and n == 4096
    assert 16384 not in calls  # 8192 gained nothing over 4096: no larger size is tried
    # A rate that only settles after noisy timings: the best of them, once PATIENCE timings bring nothing new.
    noisy = iter([2.0, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0])
    assert peak.stable_rate(lambda n, count: next(noisy) * count * 2 * n**3 / 1e9, 1) == pytest.approx(1e9)


def test_the_peak_is_measured_once_per_setting_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XFW_PEAK_CACHE", str(tmp_path / "peaks.json"))
    calls = []
    device = fake_device(1e11, 512, calls)
    setting = {"framework": "torch x", "device": "cpu y", "gpu": False, "precision": "float32", "tf32": False}
    first = peak.machine_peak(setting | {"threads": 1}, device, gpu=False)
    measured = len(calls)
    again = peak.machine_peak(setting | {"threads": 1}, device, gpu=False)
    assert not first.cached and again.cached and again.flops_per_s == first.flops_per_s
    assert len(calls) == measured  # read back, not measured again
    peak.machine_peak(setting | {"threads": 2}, device, gpu=False)  # another setting: measured
    assert len(calls) > measured
    # A cache edited out of shape is measured again and rewritten, not trusted and not fatal.
    (tmp_path / "peaks.json").write_text(json.dumps({"x": 1}))
    assert not peak.machine_peak(setting | {"threads": 1}, device, gpu=False).cached
    (tmp_path / "peaks.json").write_text("{not json")
    assert not peak.machine_peak(setting | {"threads": 1}, device, gpu=False).cached


def test_gpu_memory_is_counted_per_process_and_gpus_are_told_apart():
    processes = [{"gpu_memory": {"0": 300}}, {"gpu_memory": {"0": 500}}]
    one_model = device_memory(processes)
    assert one_model.peak_bytes == 500 and one_model.per_process == [300, 500]
    assert device_memory(processes, total=True).peak_bytes == 800  # several networks on one GPU: together
    assert gpus_used(processes) == 1  # two ranks, one GPU: the peak is one GPU's, not two
    assert gpus_used([{"gpu_memory": {"0": 1}}, {"gpu_memory": {"1": 1}}]) == 2
    assert device_memory([{"gpu_memory": {}}]) is None and gpus_used([{"gpu_memory": {}}]) == 0


def test_ranks_that_share_a_gpu_are_recognised_and_refused_where_gloo_cannot_serve():
    assert gpu_of_rank(1, gpus=1, devices=2) == 0 and gpu_of_rank(1, gpus=2, devices=2) == 1
    assert ranks_share_a_gpu(2, gpus=1, devices=2) and ranks_share_a_gpu(2, gpus=2, devices=1)
    assert not ranks_share_a_gpu(2, gpus=2, devices=2) and not ranks_share_a_gpu(2, gpus=0, devices=2)
    one_gpu = Machine(16, 1, frozenset({"tf", "torch"}), frozenset({"tf", "torch"}))
    two_gpus = Machine(16, 2, frozenset({"tf", "torch"}), frozenset({"tf", "torch"}))
    config = Config()
    assert shared_gpu_refusal(find("torch", "ddp"), one_gpu, config) is None  # gloo all-reduces CUDA tensors
    assert "Horovod" in shared_gpu_refusal(find("torch", "horovod"), one_gpu, config)
    assert "gloo cannot send" in shared_gpu_refusal(find("torch", "send-recv"), one_gpu, config)
    assert shared_gpu_refusal(find("torch", "send-recv"), two_gpus, config) is None
    assert shared_gpu_refusal(find("tf", "mirrored-strategy"), one_gpu, config) is None  # one process
