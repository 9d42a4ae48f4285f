"""GPU paths (NCCL, one device per replica, nn.DataParallel). Skipped with the reason where no GPU exists."""

import pytest
from conftest import load_summary, run_xfw

from xfw.common.registry import this_machine

machine = this_machine()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(machine.gpus < 2, reason=f"needs 2 NVIDIA GPUs, this machine has {machine.gpus}"),
]


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
    assert all(c["within_tolerance"] for c in summary["comparisons"]), proc.stdout
