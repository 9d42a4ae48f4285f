"""Entry point of every worker process: `python -m xfw.cli.worker RUN_JSON`, started by a launcher.

It imports exactly one framework (through the implementation's module), trains, and rank 0 writes
result.json. Nothing is printed as data: stdout and stderr go to the run's log.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

from xfw.common.launch import TOKEN_VAR, base_env, device_cores, under_engine_launcher
from xfw.common.registry import find, this_machine
from xfw.common.runspec import RunSpec

# Test hook: XFW_INJECT_FAULT="<run-id>:crash|hang|abort-at-exit[:rank],..." makes that run's worker(s) fail on
# purpose (abort-at-exit: SIGABRT after training, as a crash in an engine's teardown would), so tests can show
# that a crashed or hung worker is contained. Unset in normal use.
FAULT_VAR = "XFW_INJECT_FAULT"


def launcher_rank() -> int:
    for var in ("HOROVOD_RANK", "RANK"):
        if var in os.environ:
            return int(os.environ[var])
    if "TF_CONFIG" in os.environ:
        return int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    return 0


def _maybe_inject_fault(run: RunSpec, when: str) -> None:
    for spec in os.environ.get(FAULT_VAR, "").split(","):
        parts = spec.split(":")
        if len(parts) < 2 or parts[0] != run.id or (len(parts) == 3 and int(parts[2]) != launcher_rank()):
            continue
        if parts[1] == "crash" and when == "start":
            raise RuntimeError(f"fault injected by {FAULT_VAR}={spec}")
        if parts[1] == "hang" and when == "start":
            while True:
                time.sleep(1)
        if parts[1] == "abort-at-exit" and when == "exit":
            os.abort()


def run_worker(run: RunSpec, launcher: str) -> None:
    impl = find(run.framework, run.implementation)
    # The same numerics settings whether xfw or the user's own launcher started this process; they must
    # be in the environment before the framework is imported.
    for key, value in base_env(run, token="").items():
        if key != TOKEN_VAR:
            os.environ.setdefault(key, value)
    cores = None if this_machine().gpus else device_cores(run, launcher_rank(), sorted(os.sched_getaffinity(0)))
    if cores:
        os.sched_setaffinity(0, cores)  # before the framework starts its thread pools, which inherit it
    _maybe_inject_fault(run, "start")
    train = getattr(importlib.import_module(impl.module), impl.function)
    train(run, launcher)
    _maybe_inject_fault(run, "exit")


def main() -> None:
    run = RunSpec.from_json(Path(sys.argv[1]).read_text())
    run_worker(run, under_engine_launcher() or "process")


if __name__ == "__main__":
    main()
