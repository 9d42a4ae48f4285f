"""Engine options (parallel.engine) that do not exist refused by name in one line, and an engine option a machine
cannot serve skipped with the reason; no worker starts. The options reaching the engines, recorded with each run
and held to the tolerance they allow: tests/frameworks/test_engines.py."""

import dataclasses

import pytest

from tests.helpers.cli import assert_one_line_error, xfw_in_process
from xfw.common.plan.machine import this_machine
from xfw.common.plan.refusals import unavailable_reason
from xfw.common.plan.registry import find
from xfw.common.spec.config import Config


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("parallel.engine.ddp.bucket_size=5", "unknown config key 'parallel.engine.ddp.bucket_size'"),
        ("parallel.engine.mpi.fusion=1", "unknown config key 'parallel.engine.mpi'"),
        ("parallel.engine.horovod.compression=int8", "parallel.engine.horovod.compression"),
        ("parallel.engine.ddp.bucket_cap_mb=0", "parallel.engine.ddp.bucket_cap_mb"),
        ("parallel.engine.tf_collective.implementation=mpi", "parallel.engine.tf_collective.implementation"),
        ("parallel.engine.ddp.comm_hook=int4", "parallel.engine.ddp.comm_hook"),
        ("parallel.engine.ddp.powersgd_rank=2", "powersgd_rank applies to comm_hook powersgd"),
        ("parallel.engine.ddp.powersgd_rank=0", "parallel.engine.ddp.powersgd_rank"),
    ],
)
def test_an_engine_option_that_does_not_exist_is_one_line(setting, expected):
    assert_one_line_error(xfw_in_process("compare", "--strategy", "mirrored", "--set", setting), expected)


def test_nccl_collectives_without_a_gpu_per_worker_skip_with_the_reason():
    nccl = Config.model_validate({"parallel": {"engine": {"tf_collective": {"implementation": "nccl"}}}})
    cpu_only = dataclasses.replace(this_machine(), gpus=0)
    reason = unavailable_reason(find("tf", "multi-worker"), cpu_only, 2, nccl)
    assert reason == "parallel.engine.tf_collective.implementation nccl needs a GPU per worker; this machine has none"
    assert unavailable_reason(find("torch", "ddp"), cpu_only, 2, nccl) is None  # not its engine
