"""Stopping xfw: SIGTERM, a double Ctrl-C or SIGKILL in the middle of a multi-process run (torchrun, TF_CONFIG,
horovodrun; one signal per engine) leaves no process behind; after SIGTERM and Ctrl-C, summary.json and the
report record the interrupted run (after SIGKILL nothing in xfw can: the workers end themselves). A taken
rendezvous port fails fast and is retried once with other ports.

Each test marks its xfw with a variable of its own, so leftovers are looked for only among its processes
(other test sessions may run xfw on the same machine). Time bounds come from xfw's own grace periods."""

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.helpers.cli import ROOT, XFW, load_summary, run_xfw
from tests.helpers.processes import MARKER_VAR, marked, wait_until
from xfw.common.execute.runner import KILL_WAIT_S, POLL_S, TERM_GRACE_S
from xfw.common.plan.launch import PORTS_VAR
from xfw.common.records import Summary

TIMEOUT_S = 90  # the run's own deadline (--timeout): the runs here never reach it
# From the signal to a clean exit: the poll that sees it, kill_run's two steps, writing the files.
STOP_BOUND_S = POLL_S + TERM_GRACE_S + KILL_WAIT_S + 15


def start_compare(out: Path, run_id: str, marker: str) -> subprocess.Popen:
    # Rank 1 hangs after its first progress report, so the run is mid-training whenever the signal comes.
    env = os.environ | {MARKER_VAR: marker, "XFW_INJECT_FAULT": f"{run_id}:hang-in-training:1"}
    args = ["compare", "--strategy", "mirrored", "--only", run_id, "--set", "training.steps=30"]
    args += ["--timeout", str(TIMEOUT_S), "--out", str(out)]
    proc = subprocess.Popen([XFW, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = out / "runs" / run_id / "repeat-0" / "progress-rank0.json"
    # The references run first; then the run itself has its whole deadline to reach its first report.
    assert wait_until(started.exists, 2 * TIMEOUT_S), proc.communicate(timeout=STOP_BOUND_S)[1][-3000:]
    return proc


def check_interrupted(out: Path, run_id: str, signame: str) -> None:
    summary = Summary.model_validate(load_summary(out))
    runs = {r.id: r for r in summary.runs}
    assert runs["tf-single"].status == "ok" and runs["torch-single"].status == "ok"  # finished before: kept
    assert runs[run_id].status == "interrupted" and runs[run_id].reason.startswith(f"interrupted by {signame}")
    assert summary.interrupted == f"interrupted by {signame} during {run_id}"
    assert f"| {run_id} | interrupted |" in (out / "report.md").read_text()


def test_sigterm_ends_a_torchrun_run_records_it_and_exits_143(tmp_path):
    marker = uuid.uuid4().hex
    proc = start_compare(tmp_path, "torch-ddp", marker)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=STOP_BOUND_S)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted by SIGTERM during torch-ddp" in err
    check_interrupted(tmp_path, "torch-ddp", "SIGTERM")
    assert marked(marker) == []


def test_a_second_ctrl_c_cannot_stop_the_clean_up_of_tf_config_workers(tmp_path):
    # The TF worker catches SIGTERM and goes on: only kill_run's SIGKILL, after TERM_GRACE_S, ends it. A second
    # SIGINT half a second in (as `timeout` relaying SIGINT gives) must not cut that short.
    marker = uuid.uuid4().hex
    proc = start_compare(tmp_path, "tf-multi-worker", marker)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=STOP_BOUND_S)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    check_interrupted(tmp_path, "tf-multi-worker", "SIGINT")
    assert marked(marker) == []


def test_sigkill_of_xfw_takes_horovodrun_and_its_ranks_with_it(tmp_path):
    # `xfw run`, not compare: summary.json is written atomically between runs, so a SIGKILL cannot spoil it;
    # what is at stake is the process tree, which nobody in xfw is left to end.
    marker = uuid.uuid4().hex
    env = os.environ | {MARKER_VAR: marker, "XFW_INJECT_FAULT": "tf-horovod:hang-in-training:1"}
    args = ["run", "--framework", "tf", "--impl", "horovod", "--set", "training.steps=30", "--timeout", str(TIMEOUT_S)]
    proc = subprocess.Popen([XFW, *args, "--out", str(tmp_path)], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    assert wait_until((tmp_path / "progress-rank0.json").exists, TIMEOUT_S), proc.communicate()[1][-3000:]
    assert len(marked(marker)) > 3  # xfw, horovodrun, its wrappers, both ranks
    proc.kill()
    proc.communicate()
    # Each worker's watchdog wakes as xfw dies and SIGKILLs the run: a scan of the process table, no grace.
    assert wait_until(lambda: marked(marker) == [], STOP_BOUND_S), [p.cmdline() for p in marked(marker)]


def test_a_taken_rendezvous_port_fails_fast_and_is_retried_with_other_ports(tmp_path):
    marker = uuid.uuid4().hex
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_xfw(
            "run",
            "--framework",
            "tf",
            "--impl",
            "multi-worker",
            "--set",
            "training.steps=30",
            "--timeout",
            str(TIMEOUT_S),
            "--out",
            str(tmp_path),
            env={MARKER_VAR: marker, PORTS_VAR: f"{port},{port}"},
            timeout=3 * TIMEOUT_S,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    note = " ".join(proc.stderr.split())
    assert f"one of the rendezvous ports {port}, {port} was already in use" in note
    assert "trying once more with other ports" in note
    assert marked(marker) == []
