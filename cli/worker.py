"""Entry point of every worker process: `python -m xfw.cli.worker RUN_JSON`, started by a launcher.

It imports exactly one framework (through the implementation's module), trains, and rank 0 writes
result.json. Nothing is printed as data: stdout and stderr go to the run's log. Faults for tests:
common/worker/faults.py.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import signal
import sys
import threading
from pathlib import Path

import psutil

from xfw.common.execute.runner import token_holders
from xfw.common.plan.launch import PARENT_VAR, TOKEN_VAR, base_env, device_cores, under_engine_launcher
from xfw.common.plan.machine import this_machine
from xfw.common.plan.registry import find
from xfw.common.plan.runspec import RunSpec
from xfw.common.strategies.base import Launcher
from xfw.common.worker.faults import launcher_rank, maybe_inject

__all__ = ["launcher_rank", "run_worker", "watch_parent"]


def watch_parent() -> None:
    """End the whole run if the xfw process that started it dies, even by SIGKILL, when it cannot clean up.

    A thread in each worker rather than PR_SET_PDEATHSIG: the worker's parent is often a launcher (torchrun,
    horovodrun and its `sh -c`), not xfw, and a death signal fires on the death of the parent thread only. The
    watchdog waits on a pidfd of xfw (no polling, no pid reuse), then SIGKILLs every process carrying the run's
    token (launchers, wrappers, the other ranks), then itself. Not started under a user's own launcher."""
    parent = os.environ.get(PARENT_VAR)
    token = os.environ.get(TOKEN_VAR)
    if not parent or not token:
        return

    def watch() -> None:
        try:
            fd = os.pidfd_open(int(parent))
            select.select([fd], [], [])  # readable once xfw has exited
        except ProcessLookupError:
            pass  # already gone
        for proc in token_holders(token):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="xfw-parent-watchdog", daemon=True).start()


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
    maybe_inject(run.id, "start")
    if run.trace is not None:  # xfw localize: the framework's replay, not the implementation's timed run
        train = importlib.import_module(f"xfw.{run.framework}_impl.trace").trace_run
    else:
        train = getattr(importlib.import_module(impl.module), impl.function)
    train(run, launcher)
    maybe_inject(run.id, "exit")


def main() -> None:
    watch_parent()  # first: the framework import alone takes seconds
    run = RunSpec.from_json(Path(sys.argv[1]).read_text())
    run_worker(run, under_engine_launcher() or Launcher.PROCESS)


if __name__ == "__main__":
    main()
