"""Asynchronous training with parameter servers (strategy parameter-server): with one worker nothing is stale and
each framework's run equals its one device within 1e-5 (TensorFlow's ParameterServerStrategy and the torch.distributed
rpc servers, and so each other); with several workers and servers every update is recorded with its staleness, the
curve is diffed but not judged, and every process ends with the servers' weights; a worker killed mid-training ends
its run as failed, the others' runs are kept and nothing is left running (bad input, one line:
tests/unit/test_parameter_server_input.py)."""

from __future__ import annotations

import json
import uuid

import numpy as np

from tests.helpers.cli import run_xfw
from tests.helpers.processes import MARKER_VAR, marked

RUNS = ("tf-parameter-server", "torch-parameter-server")


def compare(out, *sets: str, env: dict | None = None, ok: bool = True) -> dict:
    args = [a for s in sets for a in ("--set", s)]
    proc = run_xfw("compare", "--strategy", "parameter-server", *args, "--out", str(out), env=env, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_one_worker_is_one_device(tmp_path):
    summary = compare(tmp_path, "parallel.replicas=1", "training.steps=40")
    runs = {r["id"]: r for r in summary["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    judged = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    for fw in ("tf", "torch"):
        ps, single = np.array(runs[f"{fw}-parameter-server"]["loss"]), np.array(runs[f"{fw}-single"]["loss"])
        assert len(ps) == 40 and np.abs(ps - single).max() <= 1e-5 * np.abs(single).max()
        assert judged[(f"{fw}-parameter-server", f"{fw}-single")]["within_tolerance"] is True
        assert runs[f"{fw}-parameter-server"]["asynchrony"]["staleness"] == [0] * 40
    assert judged[RUNS]["kind"] == "cross_framework" and judged[RUNS]["within_tolerance"] is True


def test_several_workers_record_staleness_and_are_not_judged(tmp_path):
    summary = compare(tmp_path, "parallel.replicas=2", "sync.parameter_servers=2", "training.steps=40")
    runs = {r["id"]: r for r in summary["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("error") for r in runs.values()]
    # workers + servers, and TensorFlow's chief
    assert runs["torch-parameter-server"]["processes"] == 4 and runs["tf-parameter-server"]["processes"] == 5
    for run_id in RUNS:
        run = runs[run_id]
        updates = run["asynchrony"]
        assert updates["updates"] == 40 and len(updates["staleness"]) == 40 and min(updates["staleness"]) >= 0
        assert updates["max_staleness"] == max(updates["staleness"])
        assert np.isfinite(run["loss"]).all() and len(run["loss"]) == 40
        assert run["replica_weight_max_abs_diff"] == 0.0  # every process ends with the servers' weights
    assert sum(runs["torch-parameter-server"]["asynchrony"]["updates_per_worker"]) == 40
    for c in summary["comparisons"]:
        if "parameter-server" in c["a"]:
            assert c["kind"] == "not_judged" and c["note"].startswith("asynchronous: 2 workers"), c


def test_a_killed_worker_fails_its_run_and_leaves_nothing(tmp_path):
    marker = uuid.uuid4().hex
    # rank 1 is the first worker in both (TensorFlow: after the chief; PyTorch: after the one server); enough steps
    # that the other worker cannot finish the run before the failure ends it
    env = {"XFW_INJECT_FAULT": ",".join(f"{r}:killed-in-training:1" for r in RUNS), MARKER_VAR: marker}
    summary = compare(
        tmp_path, "parallel.replicas=2", "training.steps=6000", "runtime.timeout_s=120", env=env, ok=False
    )
    runs = {r["id"]: r for r in summary["runs"]}
    for run_id in RUNS:
        assert runs[run_id]["status"] == "failed", runs[run_id]
        assert "timed out" not in runs[run_id]["error"].splitlines()[0]  # the kill ended it, not the deadline
    assert runs["tf-single"]["status"] == "ok" and runs["torch-single"]["status"] == "ok"
    assert marked(marker) == []
