"""The output folder's file-system errors: in one line with summary.json intact, through the real `xfw` command; a
small tmpfs stands in for a read-only folder and a full disk (root: mounts; skipped with the reason elsewhere)."""

import shutil
import subprocess

import pytest

from tests.helpers.cli import XFW, assert_one_line_error, load_summary, run_xfw

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
