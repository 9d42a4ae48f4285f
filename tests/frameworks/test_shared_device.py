"""Two networks sharing one device through the real CLI: concurrency never changes the arithmetic, each network
trains on its own batches, a verdict is given for each pair (the verdict logic: tests/unit/test_judgements.py)."""

import pytest

from tests.helpers.cli import ROOT
from tests.helpers.several_networks import STEPS, VERDICTS, WIDTH, compare, curves
from tests.helpers.work_split import assert_network_trained_on_its_batches
from xfw.common.plan.machine import this_machine
from xfw.common.spec.config import load_config, network_config


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    return compare(
        tmp_path_factory, "shared-device", "configs/shared_device.yaml", f"shared_device.hidden_widths=[{WIDTH}]"
    )


def test_shared_device_runs_are_bit_identical_to_sequential(shared):
    proc, summary, _ = shared
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["id"]: r for r in summary["runs"]}
    config = load_config(ROOT / "configs/shared_device.yaml", [f"training.steps={STEPS}"])
    for width in (WIDTH,):
        for fw in ("tf", "torch"):
            ref = runs[f"{fw}-shared-sequential@h{width}"]
            assert ref["status"] == "ok", ref.get("error")
            for impl in ("shared-threads", "shared-processes"):
                r = runs[f"{fw}-{impl}@h{width}"]
                assert r["status"] == "ok", r.get("error")
                assert curves(r) == curves(ref), r["id"]
                assert r["overlap"] > 0.3, (r["id"], r["overlap"])
                for n in r["networks"]:
                    assert_network_trained_on_its_batches(n, network_config(config, n["index"]), r["id"])
        cuda = runs[f"torch-shared-cuda-streams@h{width}"]
        if this_machine().gpus == 0:
            assert cuda["status"] == "skipped" and cuda["reason"] == "needs a GPU, this machine has none"


def test_shared_device_verdicts_follow_from_the_throughputs(shared):
    _, summary, _ = shared
    runs = {r["id"]: r for r in summary["runs"]}
    band = summary["config"]["shared_device"]["verdict_band"]
    checked = 0
    for c in summary["comparisons"]:
        if c["kind"] != "identical" or c["status"] != "ok":
            continue
        a, b = runs[c["a"]], runs[c["b"]]
        ratio = a["combined_throughput_samples_per_s"] / b["combined_throughput_samples_per_s"]
        assert c["throughput_ratio"] == pytest.approx(ratio)
        assert c["verdict"] in VERDICTS and c["verdict_band"] == band
        alone = {n["name"]: n["throughput_samples_per_s"] for n in b["networks"]}
        for n in a["networks"]:
            assert c["networks"][n["name"]]["slowdown"] == pytest.approx(
                alone[n["name"]] / n["throughput_samples_per_s"]
            )
        assert a["peak_memory_bytes"] > 0
        checked += 1
    assert checked == 4  # threads and processes, 2 frameworks
    sweep = {line["run"]: line for line in summary["sweep"]}
    assert set(sweep) == {"tf-shared-threads", "tf-shared-processes", "torch-shared-threads", "torch-shared-processes"}
    for line in sweep.values():
        assert [p["hidden_width"] for p in line["points"]] == [WIDTH] and line["flips"] == []


def test_shared_device_sweep_resizes_the_networks(shared):
    _, summary, out = shared
    for r in summary["runs"]:
        if r["status"] == "ok":
            width = r["size"]["hidden_width"]
            assert r["id"].endswith(f"@h{width}")
    assert (out / "sweep.png").stat().st_size > 0
    assert "## Size sweep" in (out / "report.md").read_text()
