"""A crashed or hung worker: its run fails with its log's tail, the other runs are kept, the compare ends
within its deadline, and no process is left behind. A crash after the complete result is written keeps
the result and records the crash."""

import time

import psutil
import pytest
from conftest import load_summary, run_xfw

from xfw.common.launch import TOKEN_VAR

pytestmark = pytest.mark.frameworks


def xfw_processes() -> list[int]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if TOKEN_VAR in p.environ() and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def test_crash_and_hang_are_contained(tmp_path):
    timeout_s = 25
    start = time.monotonic()
    proc = run_xfw(
        "compare",
        "--strategy",
        "mirrored",
        "--only",
        "torch-ddp",
        "--only",
        "tf-multi-worker",
        "--only",
        "torch-allreduce",
        "--set",
        "training.steps=60",
        "--timeout",
        str(timeout_s),
        "--out",
        str(tmp_path),
        env={"XFW_INJECT_FAULT": "torch-ddp:crash:1,tf-multi-worker:hang:1"},
        timeout=300,
    )
    took = time.monotonic() - start
    assert proc.returncode == 1  # runs failed: reported, not hidden
    runs = {r["id"]: r for r in load_summary(tmp_path)["runs"]}
    assert runs["torch-ddp"]["status"] == "failed" and "fault injected" in runs["torch-ddp"]["error"]
    assert runs["tf-multi-worker"]["status"] == "failed" and "timed out after 25 s" in runs["tf-multi-worker"]["error"]
    for kept in ("tf-single", "torch-single", "torch-allreduce"):
        assert runs[kept]["status"] == "ok" and len(runs[kept]["loss"]) == 60
    assert "FAILED" in proc.stderr and "torch-ddp" in proc.stdout
    # Three healthy runs take ~15 s here; the hang may cost at most its deadline plus the kill.
    assert took < 60 + timeout_s + 30
    assert xfw_processes() == []


def test_a_crash_after_the_result_is_written_keeps_the_result_and_says_so(tmp_path):
    # Rank 0 writes result.json only after gathering every rank: a process dying after that (a rare SIGABRT
    # in gloo's teardown was seen) must neither discard the complete result nor pass unnoticed.
    proc = run_xfw(
        "compare",
        "--strategy",
        "independent",
        "--only",
        "torch-processes",
        "--set",
        "training.steps=30",
        "--out",
        str(tmp_path),
        env={"XFW_INJECT_FAULT": "torch-processes:abort-at-exit:1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = load_summary(tmp_path)["runs"]
    assert run["status"] == "ok" and len(run["networks"][1]["loss"]) == 30
    assert "SIGABRT" in run["teardown_errors"][0]
    assert (
        "after the result was written: process 0 exited with status 1: rank 1" in (tmp_path / "report.md").read_text()
    )
    assert xfw_processes() == []
