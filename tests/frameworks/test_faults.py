"""A crashed or hung worker: its run fails with its log's tail, the other runs are kept, the compare ends
within its deadline, and no process is left behind. A hang's reason names where each rank stopped, not xfw's own
kill. A crash after the complete result is written keeps the result and records the crash; a process that does
not exit after it is ended after EXIT_GRACE_S, not at the deadline."""

import re
import time
import uuid

from tests.helpers.cli import load_summary, run_xfw
from tests.helpers.processes import MARKER_VAR, marked
from xfw.common.execute.runner import EXIT_GRACE_S, FAILURE_GRACE_S, KILL_WAIT_S, TERM_GRACE_S


def test_crash_and_hang_are_contained(tmp_path):
    timeout_s = 25
    marker = uuid.uuid4().hex
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
        "--only",
        "torch-horovod",
        "--set",
        "training.steps=60",
        "--timeout",
        str(timeout_s),
        "--out",
        str(tmp_path),
        env={
            "XFW_INJECT_FAULT": "torch-ddp:crash:1,tf-multi-worker:hang-in-training:1,torch-allreduce:hang-at-exit:1,"
            "torch-horovod:crash-in-training:1",
            MARKER_VAR: marker,
        },
        timeout=300,
    )
    took = time.monotonic() - start
    assert proc.returncode == 1  # runs failed: reported, not hidden
    runs = {r["id"]: r for r in load_summary(tmp_path)["runs"]}
    for crashed in ("torch-ddp", "torch-horovod"):  # rank 1 dies: at start (torchrun), mid-training (horovodrun)
        assert runs[crashed]["status"] == "failed" and "fault injected" in runs[crashed]["error"], runs[crashed]
    hang = runs["tf-multi-worker"]
    assert hang["status"] == "failed" and hang["error"].startswith("timed out after 25 s (runtime.timeout_s): ")
    assert re.search(r"rank 1 last reported step \d+/60", hang["error"].splitlines()[0])
    assert "got signal" not in hang["error"].splitlines()[0]  # xfw's own kill is not the cause
    for kept in ("tf-single", "torch-single", "torch-allreduce"):
        assert runs[kept]["status"] == "ok" and len(runs[kept]["loss"]) == 60
    assert f"did not exit within {EXIT_GRACE_S:g} s" in runs["torch-allreduce"]["teardown_errors"][0]
    assert "FAILED" in proc.stderr and "torch-ddp" in proc.stdout
    failures = (tmp_path / "report.md").read_text().split("## Failures")[1]
    for failed in ("torch-ddp", "tf-multi-worker", "torch-horovod"):
        assert f"### {failed}" in failures
    # No run may outlast its deadline and the kill that ends it; the stuck exit costs its grace, the crashed
    # multi-process runs at most their failure grace. From xfw's own settings, not from how fast this machine is.
    per_run = timeout_s + TERM_GRACE_S + KILL_WAIT_S
    assert took < len(runs) * per_run + EXIT_GRACE_S + 2 * FAILURE_GRACE_S
    assert marked(marker) == []


def test_a_crash_after_the_result_is_written_keeps_the_result_and_says_so(tmp_path):
    # Rank 0 writes result.json only after gathering every rank: a process dying after that (a rare SIGABRT
    # in gloo's teardown was seen) must neither discard the complete result nor pass unnoticed.
    marker = uuid.uuid4().hex
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
        env={"XFW_INJECT_FAULT": "torch-processes:abort-at-exit:1", MARKER_VAR: marker},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = load_summary(tmp_path)["runs"]
    assert run["status"] == "ok" and len(run["networks"][1]["loss"]) == 30
    assert "SIGABRT" in run["teardown_errors"][0]
    assert (
        "after the result was written: process 0 exited with status 1: rank 1" in (tmp_path / "report.md").read_text()
    )
    assert marked(marker) == []
