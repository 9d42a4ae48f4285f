"""The local executor's follow and cancel (common/execute/local.py), without a framework: the step comes from rank 0's
progress file, and cancel ends every process carrying the run's token."""

import os
import subprocess
import sys

from xfw.common.execute.executor import NoProgress
from xfw.common.execute.local import LocalExecutor
from xfw.common.plan.launch import TOKEN_VAR
from xfw.common.plan.machine import Machine
from xfw.common.plan.registry import find
from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.config import load_config
from xfw.common.worker.loop import progress_writer

CPU = Machine(cpu_cores=2, gpus=0, frameworks=frozenset(), horovod_frameworks=frozenset())


def submitted(tmp_path):
    impl = find("torch", "single")
    run = RunSpec(load_config(), impl.framework, impl.strategy, impl.name, str(tmp_path))
    executor = LocalExecutor(CPU)
    return executor, executor.submit(impl, run, 60.0, NoProgress())


def test_step_is_rank_0s_last_report(tmp_path):
    executor, handle = submitted(tmp_path)
    assert executor.step(handle) is None  # nothing reported yet
    progress_writer(handle.run, 0)(7)
    assert executor.step(handle) == 7


def test_cancel_ends_the_processes_carrying_the_token(tmp_path):
    executor, handle = submitted(tmp_path)
    env = os.environ | {TOKEN_VAR: handle.token}
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env) for _ in range(2)]
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        executor.cancel(handle)
        assert [p.wait(timeout=10) for p in procs] == [-9, -9]
        assert bystander.poll() is None  # another run's process (no token) is left alone
    finally:
        for p in [*procs, bystander]:
            p.kill()
            p.wait()
