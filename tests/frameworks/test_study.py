"""`xfw study`: a real study stopped by a signal and finished with --resume, and a failed cell that does not stop the
others (the statistics and bad input: tests/unit/test_study_statistics.py)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers.cli import ROOT, XFW_COMMAND, assert_one_line_error, run_xfw
from tests.helpers.studies import write_study


def cell_files(out: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in sorted((out / "cells").glob("*/cell.json"))}


def test_study_stopped_by_a_signal_finishes_with_resume(tmp_path):
    study, out = write_study(tmp_path / "tiny.yaml"), tmp_path / "out"
    proc = subprocess.Popen(
        [*XFW_COMMAND, "study", str(study), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 300
    while not list((out / "cells").glob("*/cell.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # during the second cell's runs
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "--resume" in err and "Traceback" not in err
    first = cell_files(out)
    assert len(first) == 1
    partial = (out / "study.md").read_text()
    assert "Stopped before the end" in partial and "1 of 2 cells done" in partial

    again = run_xfw("study", str(study), "--out", str(out))  # without --resume: refused, nothing run
    assert_one_line_error(again, "add --resume")

    resumed = run_xfw("study", str(study), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 1 of 2 cells already done" in resumed.stderr
    assert resumed.stderr.count("ok torch-single") == 2  # the missing cell's two seeds, nothing else
    done = cell_files(out)
    assert len(done) == 2 and all(done[k] == v for k, v in first.items())  # the finished cell was not rerun

    report = json.loads((out / "study.json").read_text())
    assert report["cells_done"] == 2 and report["stopped"] is None
    for cell in report["cells"]:
        (impl,) = cell["implementations"]
        assert impl["implementation"] == "torch-single" and impl["processes"] == 2 and impl["seeds"] == 2
        assert impl["target_reached"] == 0 and impl["seconds_to_target"] is None
        assert impl["process_spread"] is not None  # two processes: a noise floor
    md = (out / "study.md").read_text()
    assert "does not reach train_loss <= 1e-09 within 60 steps" in md and "not reached" in md
    for plot in ("throughput_vs_training_global_batch.png", "loss_vs_time.png", "throughput_vs_memory.png"):
        assert f"]({plot})" in md and (out / plot).stat().st_size > 0
    with open(out / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2  # cells x (seed, process)
    assert {r["training.global_batch"] for r in rows} == {"16", "32"}
    assert all(float(r["throughput_samples_per_s"]) > 0 and r["steps_to_target"] == "" for r in rows)

    # Nothing left to run: --resume rebuilds the same outputs from the same cells.
    before = {f: (out / f).read_text() for f in ("study.md", "study.json", "study.csv")}
    rebuilt = run_xfw("study", str(study), "--out", str(out), "--resume")
    assert rebuilt.returncode == 0 and "ok torch-single" not in rebuilt.stderr
    assert {f: (out / f).read_text() for f in before} == before


def test_a_failed_cell_is_recorded_and_the_others_go_on(tmp_path):
    study, out = write_study(tmp_path / "tiny.yaml", seeds=[0], repeats=2), tmp_path / "out"
    crashed = run_xfw("study", str(study), "--out", str(out), env={"XFW_INJECT_FAULT": "torch-single:crash"})
    assert crashed.returncode == 1, crashed.stderr
    records = [json.loads(t) for t in cell_files(out).values()]
    assert len(records) == 2 and all(r["status"] == "failed" for r in records)  # both cells tried
    assert all("fault injected" in r["errors"][0] for r in records)
    with open(out / "study.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["failed", "failed"]
    fixed = run_xfw("study", str(study), "--out", str(out), "--resume")  # failed cells are run again
    assert fixed.returncode == 0, fixed.stderr
    assert all(json.loads(t)["status"] == "ok" for t in cell_files(out).values())
