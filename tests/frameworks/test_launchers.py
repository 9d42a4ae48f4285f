"""A user who starts a run with the engine's own launcher gets the same result file as `xfw compare`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, XFW
from xfw.common.plan.launch import free_ports
from xfw.common.plan.machine import this_machine
from xfw.common.plan.refusals import unavailable_reason
from xfw.common.plan.registry import find

BIN = Path(sys.executable).parent


def compare_result(out: Path, run_id: str) -> dict:
    return json.loads((out / "runs" / run_id / "repeat-0" / "result.json").read_text())


def assert_same_run(mine: dict, theirs: dict):
    assert mine["loss"] == theirs["loss"]  # bit-identical: same config, same engine, determinism on
    assert set(mine) == set(theirs) and mine["processes"] == theirs["processes"] == 2


def launch(cmd, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ | (env or {}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun(mirrored, tmp_path):
    _, _, out = mirrored
    proc = launch(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc-per-node",
            "2",
            "--no-python",
            XFW,
            "run",
            "--framework",
            "torch",
            "--impl",
            "ddp",
            "--out",
            str(tmp_path),
        ]
    )
    assert_same_run(json.loads((tmp_path / "result.json").read_text()), compare_result(out, "torch-ddp"))
    # Rank 0, and only rank 0, says where the result went.
    assert (proc.stdout + proc.stderr).count(f"torch-ddp: result: {tmp_path / 'result.json'}") == 1

    # xfw diff: the direct launch against the compare's single-device run, as the compare judged them.
    diff = subprocess.run(
        [XFW, "diff", str(tmp_path), str(out / "runs" / "torch-single")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert "torch-ddp vs torch-single" in diff.stdout and "same framework" in diff.stdout and "PASS" in diff.stdout

    # A result of another config is refused with one line naming the difference.
    other = json.loads((tmp_path / "result.json").read_text())
    other["config"]["seed"] = 7
    (tmp_path / "other.json").write_text(json.dumps(other))
    refused = subprocess.run(
        [XFW, "diff", str(tmp_path / "other.json"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "configs differ" in refused.stderr and "seed (7 vs 0)" in refused.stderr


@pytest.mark.parametrize("framework", ["tf", "torch"])
def test_horovodrun(mirrored, tmp_path, framework):
    reason = unavailable_reason(find(framework, "horovod"), this_machine())
    if reason:
        pytest.skip(reason)
    _, _, out = mirrored
    launch(
        [
            str(BIN / "horovodrun"),
            "-np",
            "2",
            "-H",
            "localhost:2",
            "--gloo",
            XFW,
            "run",
            "--framework",
            framework,
            "--impl",
            "horovod",
            "--out",
            str(tmp_path),
        ]
    )
    assert_same_run(json.loads((tmp_path / "result.json").read_text()), compare_result(out, f"{framework}-horovod"))


def test_tf_config_workers(mirrored, tmp_path):
    _, _, out = mirrored
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    procs = [
        subprocess.Popen(
            [XFW, "run", "--framework", "tf", "--impl", "multi-worker", "--out", str(tmp_path)],
            cwd=ROOT,
            env=os.environ | {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert_same_run(json.loads((tmp_path / "result.json").read_text()), compare_result(out, "tf-multi-worker"))
