"""Test hook: XFW_INJECT_FAULT="<run-id>:<fault>[:rank],..." makes that run's worker(s) fail on purpose, so tests
can show that a crashed or hung worker is contained. Unset in normal use. Faults:

    crash             raise at start, before the framework is imported
    hang              hang at start (the other ranks then wait in the rendezvous)
    hang-in-training  hang after the first progress report (warm-up done; the others wait in a collective)
    crash-in-training raise after the first progress report (the framework and the engine are running)
    killed-in-training SIGKILL after the first progress report (parameter-server workers: after their first update)
    abort-at-exit     SIGABRT after training and the result, as a crash in an engine's teardown would
    hang-at-exit      hang after training and the result, as a stuck teardown would

XFW_PERTURB="<run-id>:<parameter>:<flat index>:<delta>" adds delta to one initial weight of that run (a real
difference for `xfw localize` to find). Unset in normal use.
"""

from __future__ import annotations

import json
import os
import signal
import time

FAULT_VAR = "XFW_INJECT_FAULT"
PERTURB_VAR = "XFW_PERTURB"


def launcher_rank() -> int:
    for var in ("HOROVOD_RANK", "RANK"):
        if var in os.environ:
            return int(os.environ[var])
    if "TF_CONFIG" in os.environ:
        # rank order: the cluster's task types in the order it lists them (common/plan/launch.tf_cluster)
        tf_config = json.loads(os.environ["TF_CONFIG"])
        task, cluster = tf_config["task"], tf_config["cluster"]
        before = 0
        for task_type, addresses in cluster.items():
            if task_type == task["type"]:
                return before + int(task["index"])
            before += len(addresses)
    return 0


def injected(run_id: str) -> set[str]:
    """The faults asked for this run and this process."""
    found = set()
    for spec in os.environ.get(FAULT_VAR, "").split(","):
        parts = spec.split(":")
        if len(parts) >= 2 and parts[0] == run_id and (len(parts) < 3 or int(parts[2]) == launcher_rank()):
            found.add(parts[1])
    return found


def maybe_inject(run_id: str, when: str) -> None:
    """`when`: start, training (after a progress report) or exit."""
    faults = injected(run_id)
    if when == "start" and "crash" in faults:
        raise RuntimeError(f"fault injected by {FAULT_VAR}: {run_id}:crash")
    if when == "training" and "crash-in-training" in faults:
        raise RuntimeError(f"fault injected by {FAULT_VAR}: {run_id}:crash-in-training")
    if when == "training" and "killed-in-training" in faults:
        os.kill(os.getpid(), signal.SIGKILL)
    if (when == "start" and "hang" in faults) or (when == "training" and "hang-in-training" in faults):
        while True:
            time.sleep(1)
    if when == "exit" and "abort-at-exit" in faults:
        os.abort()
    if when == "exit" and "hang-at-exit" in faults:
        while True:
            time.sleep(1)


def perturbed(run_id: str, weights: dict) -> dict:
    """The initial weights, with XFW_PERTURB's change where it names this run (a copy; the rest untouched)."""
    spec = os.environ.get(PERTURB_VAR, "")
    if not spec:
        return weights
    target, name, index, delta = spec.rsplit(":", 3)
    if target != run_id:
        return weights
    value = weights[name].copy()
    value.flat[int(index)] += float(delta)
    return weights | {name: value}
