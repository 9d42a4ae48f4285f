"""The output folder: one xfw at a time, through the real `xfw` command. File-system errors on a small tmpfs (root):
tests/hosts/test_out_folder_tmpfs.py; malformed data: tests/unit/test_malformed_data.py."""

import json
import subprocess
import time

from tests.helpers.cli import XFW, assert_one_line_error, load_summary, run_xfw

SHORT = ["--set", "training.steps=30", "--set", "training.warmup_steps=5", "--set", "training.timing_windows=5"]


def test_two_compares_on_one_folder_one_runs_one_is_refused(tmp_path):
    out = tmp_path / "out"
    run_dir = out / "runs" / "torch-single" / "repeat-0"
    run_dir.mkdir(parents=True)
    (run_dir / "notes").mkdir()  # not xfw's: survives the rerun into this folder
    (run_dir / "result.json").write_text("{}")  # a stale result never passes for the new run's
    cmd = [XFW, "compare", "--strategy", "single", "--only", "torch-single", "--out", str(out), *SHORT]
    first = subprocess.Popen([*cmd, "--set", "data.test_fraction=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = out / ".xfw.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_bytes().startswith(b"pid ")) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_xfw(*cmd[1:])
    assert_one_line_error(second, f"--out {out} is in use by another xfw (pid {first.pid}, `xfw compare")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    summary = load_summary(out)
    assert [(r["id"], r["status"]) for r in summary["runs"]] == [("torch-single", "ok")]
    assert summary["runs"][0]["eval"] == {}  # test_fraction 0: no held-out split, no evaluation
    assert "| torch-single | ok | " in (out / "report.md").read_text()
    assert (run_dir / "notes").is_dir() and json.loads((run_dir / "result.json").read_text())["loss"]
    assert lock.read_bytes() == b""  # released: the next xfw may use the folder
    third = run_xfw("diff", str(run_dir), str(run_dir), "--out", str(out))
    assert third.returncode == 0, third.stderr
