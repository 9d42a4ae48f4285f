"""Driving xfw the way a user does, through the installed `xfw` command (or in-process, for input it refuses before
any worker starts), and reading what it wrote back through the typed records."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from xfw.common.records import Summary, read_result

ROOT = Path(__file__).resolve().parents[2]  # tests/helpers/cli.py -> the checkout
XFW = str(Path(sys.executable).with_name("xfw"))
# The installed command; where xfw runs from the source folders instead (scripts/gpu_check.sh on a machine with
# its own Python), the same CLI as a module.
XFW_COMMAND = [XFW] if Path(XFW).exists() else [sys.executable, "-m", "xfw.cli.main"]


def run_xfw(
    *args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*XFW_COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=os.environ | (env or {}),
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    """Bad input: exit status 2, one line `xfw: error: ...` naming the problem, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xfw: error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def xfw_in_process(*args: str) -> subprocess.CompletedProcess:
    """`xfw ARGS` run inside the test process (click's CliRunner isolation): for bad input that xfw refuses before
    any worker starts, where a process of its own would cost more than the check. Same exit status and streams."""
    from click.testing import CliRunner

    from xfw.cli.main import main

    cwd = os.getcwd()
    with CliRunner().isolation() as (out, err, _), mock.patch.object(sys, "argv", ["xfw", *args]):
        os.chdir(ROOT)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os.chdir(cwd)
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["xfw", *args], code, stdout, stderr)


def strict_json(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def load_summary(out: Path) -> dict:
    """summary.json as data, after checking it and every result.json it lists against the typed records
    (common.records: types, ranges, the fields each run status requires, no unknown keys)."""
    data = strict_json((out / "summary.json").read_text())
    Summary.model_validate(data)
    for run in data["runs"]:
        for file in run.get("result_files", []):
            read_result(strict_json(Path(file).read_text()))
    return data


def compare_once(tmp_path_factory, name: str, *args: str) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """`xfw compare ARGS` run once for the whole test session, however many pytest-xdist workers ask for it (`make
    test` runs two): the first runs it under a file lock in the workers' shared temporary folder, the others wait
    for the lock and read what it left (pytest-xdist's documented pattern for session fixtures)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    out, saved = root / f"compare-{name}", root / f"compare-{name}.proc.json"
    with open(root / f"compare-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not saved.exists():
            proc = run_xfw("compare", *args, "--out", str(out))
            saved.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
        done = json.loads(saved.read_text())
    proc = subprocess.CompletedProcess(["xfw", "compare", *args], done["returncode"], done["stdout"], done["stderr"])
    assert (out / "summary.json").exists(), proc.stderr[-3000:]
    return proc, load_summary(out), out
