"""Launch plans are pure: checked without spawning anything."""

import json
from pathlib import Path

from xfw.common.plan.launch import TOKEN_VAR, plan
from xfw.common.plan.machine import Machine
from xfw.common.plan.registry import find
from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.config import load_config

CPU = Machine(cpu_cores=2, gpus=0, frameworks=frozenset({"tf", "torch"}), horovod_frameworks=frozenset({"tf", "torch"}))


def make(framework, impl):
    i = find(framework, impl)
    run = RunSpec(load_config(), framework, i.strategy, i.name, "/tmp/x")
    return plan(i, run, Path("/tmp/x/run.json"), CPU, token="tok", ports=[1111, 2222])


def test_torchrun_plan():
    p = make("torch", "ddp")
    (cmd,) = p.commands
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=2" in cmd
    assert cmd[-3:] == ["-m", "xfw.cli.worker", "/tmp/x/run.json"] and "--max-restarts=0" in cmd
    assert p.envs[0][TOKEN_VAR] == "tok"


def test_horovodrun_plan():
    (cmd,) = make("tf", "horovod").commands
    assert Path(cmd[0]).name == "horovodrun" and cmd[1:6] == ["-np", "2", "-H", "localhost:2", "--gloo"]


def test_tf_config_plan_gives_each_worker_its_index():
    p = make("tf", "multi-worker")
    configs = [json.loads(e["TF_CONFIG"]) for e in p.envs]
    assert [c["task"] for c in configs] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
    assert all(c["cluster"]["worker"] == ["localhost:1111", "localhost:2222"] for c in configs)


def test_single_process_plan_sets_threads_and_determinism():
    p = make("tf", "single")
    assert len(p.commands) == 1
    assert p.envs[0]["OMP_NUM_THREADS"] == "1" and p.envs[0]["TF_ENABLE_ONEDNN_OPTS"] == "0"
