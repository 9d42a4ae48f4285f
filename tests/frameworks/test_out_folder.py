"""The output folder: one xfw at a time, file-system errors in one line with summary.json intact, malformed data
refused before any worker starts (through the real `xfw` command; a small tmpfs stands in for a full disk)."""

import json
import shutil
import subprocess
import time

import numpy as np
import pytest
from conftest import XFW, assert_one_line_error, load_summary, run_xfw

SHORT = ["--set", "training.steps=30", "--set", "training.warmup_steps=5", "--set", "training.timing_windows=5"]


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a 64 KiB tmpfs (options: extra mount options); unmounted afterwards. Skips where it cannot."""
    mounted = []

    def mount(name: str, *options: str):
        path = tmp_path / name
        path.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join(["size=64k", *options]), "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


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


def test_unwritable_out_is_refused_before_anything_runs(tmp_path, tmpfs):
    assert_one_line_error(
        run_xfw("compare", "--strategy", "single", "--out", "/proc/xfw-out"), "--out /proc/xfw-out: cannot create"
    )
    (tmp_path / "file").write_text("")
    proc = run_xfw("run", "--framework", "torch", "--impl", "single", "--out", str(tmp_path / "file"))
    assert_one_line_error(proc, "is a file")
    ro = tmpfs("ro", "ro")
    proc = run_xfw("compare", "--strategy", "single", "--out", str(ro / "out"))
    assert_one_line_error(proc, "cannot create the folder: Read-only file system")
    proc = run_xfw("run", "--framework", "torch", "--impl", "single", "--out", str(ro))
    assert_one_line_error(proc, f"--out {ro}: cannot write there: Read-only file system")
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv: cannot drop root's right to write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)  # a folder the user may not write: root without CAP_DAC_OVERRIDE is such a user
    no_override = "-dac_override,-dac_read_search"
    proc = subprocess.run(
        ["setpriv", f"--inh-caps={no_override}", f"--bounding-set={no_override}", "--", XFW, "compare", "--strategy"]
        + ["single", "--out", str(locked)],
        capture_output=True,
        text=True,
    )
    assert_one_line_error(proc, f"--out {locked}: cannot write there: Permission denied")


def test_full_disk_fails_the_runs_in_one_line_and_keeps_the_summary(tmpfs):
    disk = tmpfs("full")
    out = disk / "out"
    proc = run_xfw(
        "compare", "--strategy", "single", "--out", str(out), *SHORT, "--only", "tf-single", "--only", "torch-single"
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    runs = load_summary(out)["runs"]  # valid JSON, every run in it
    assert [r["id"] for r in runs] == ["tf-single", "torch-single"]
    assert all(r["status"] == "failed" and "No space left on device" in r["error"].splitlines()[0] for r in runs)
    assert not list(disk.rglob("*.tmp"))

    # The disk then turns read-only: the report is named as not written, summary.json is left as it was.
    before = (out / "summary.json").read_bytes()
    (out / "report.md").unlink(missing_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    script = (
        "import json, pathlib, sys\n"
        "from xfw.cli.main import report_or_error\nfrom xfw.common.records import Summary\n"
        f"out = pathlib.Path({str(out)!r})\n"
        "sys.exit(report_or_error(Summary.model_validate(json.loads((out / 'summary.json').read_text())), out) is None)"
    )
    proc = subprocess.run([XFW.replace("/xfw", "/python"), "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1
    assert_one_line_error(subprocess.CompletedProcess(proc.args, 2, proc.stdout, proc.stderr), "report not written: ")
    assert "Read-only file system (summary.json is complete)" in proc.stderr
    assert (out / "summary.json").read_bytes() == before and not list(disk.rglob("*.tmp"))


def test_malformed_npz_is_refused_before_any_worker_starts(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((100, 10)), y_train=np.zeros((99, 10)))
    out = tmp_path / "out"
    proc = run_xfw(
        "compare", "--strategy", "mirrored", "--set", "data.kind=npz", "--set", f"data.path={path}", "--out", str(out)
    )
    assert_one_line_error(proc, f"data.path {path}: x_train has 100 samples but y_train has 99")
    assert not out.exists()  # created by this invocation, nothing written: removed again
