"""How xfw measures what its tables show beside the losses, end to end: a CPU run reports its peak FLOP rate (cached
per setting) and no GPU memory. The parts on made-up devices: tests/unit/test_peak_and_memory.py; the rest on a
GPU: tests/gpu/test_gpu.py."""

from tests.helpers.cli import load_summary, run_xfw


def test_a_cpu_run_reports_its_peak_and_no_gpu_memory(tmp_path):
    env = {"XFW_PEAK_CACHE": str(tmp_path / "peaks.json")}
    args = ("compare", "--strategy", "single", "--only", "torch-single", "--set", "training.steps=30")
    proc = run_xfw(*args, "--out", str(tmp_path / "a"), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = load_summary(tmp_path / "a")["runs"][0]
    assert run["device_memory"] is None and 0 < run["flops"]["utilization"] < 1
    assert run["flops"]["peak"]["setting"]["threads"] == 1 and not run["flops"]["peak"]["cached"]
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| GPU MiB |" in report and "| 0.00% |" not in report
    assert f"kept in {tmp_path / 'peaks.json'}" in report
    again = run_xfw(*args, "--out", str(tmp_path / "b"), env=env)
    assert load_summary(tmp_path / "b")["runs"][0]["flops"]["peak"]["cached"], again.stderr[-2000:]
