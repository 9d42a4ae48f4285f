"""A run's layout as mesh axes and its processes as roles (common/plan/mesh.py, Strategy.mesh and Strategy.roles),
and what the launch planners and the fault hook build from them, without spawning anything."""

import json
from pathlib import Path

import pytest

from xfw.common.plan.launch import host_index, plan, tf_cluster
from xfw.common.plan.machine import Machine
from xfw.common.plan.mesh import Axis, Mesh
from xfw.common.plan.registry import find, get_strategy
from xfw.common.plan.runspec import RunSpec
from xfw.common.spec.config import load_config
from xfw.common.worker.faults import launcher_rank

CPU = Machine(cpu_cores=2, gpus=0, frameworks=frozenset({"tf", "torch"}), horovod_frameworks=frozenset({"tf", "torch"}))


def spec(framework: str, impl: str, *overrides: str) -> RunSpec:
    i = find(framework, impl)
    return RunSpec(load_config(None, list(overrides)), framework, i.strategy, i.name, "/tmp/x")


def test_mesh_sizes_world_and_coordinates():
    mesh = Mesh.of(data=2, pipeline=3)
    assert mesh.world == 6 and mesh.size(Axis.DATA) == 2 and mesh.size(Axis.TENSOR) == 1
    assert mesh.batch_shards == 2 and mesh.describe() == "data 2 x pipeline 3"
    # row-major as torch's DeviceMesh: the last axis varies fastest
    assert [mesh.coordinates(r)[Axis.PIPELINE] for r in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [mesh.coordinates(r)[Axis.DATA] for r in range(6)] == [0, 0, 0, 1, 1, 1]
    assert Mesh.of(data=1).world == 1 and Mesh.of().describe() == "one device"
    assert Mesh.of(data=2, shard=2).batch_shards == 4
    with pytest.raises(ValueError, match="size 0"):
        Mesh.of(data=0)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("single", {}),
        ("mirrored", {"data": 2}),
        ("local-sgd", {"data": 2}),
        ("parameter-server", {"data": 2}),
        ("model-parallel", {"pipeline": 3}),
        ("pipeline", {"pipeline": 3}),
        ("hybrid", {"data": 2, "pipeline": 3}),
        ("independent", {}),
    ],
)
def test_each_strategy_uses_its_axes(strategy, expected):
    config = load_config(None, ["parallel.replicas=2", "model_parallel.stages=3"])
    assert get_strategy(strategy).mesh(config).to_dict() == expected


def test_run_spec_reads_replicas_and_stages_from_the_mesh():
    run = spec("torch", "hybrid", "parallel.replicas=2", "model_parallel.stages=2")
    assert (run.replicas, run.stages, run.devices, run.processes) == (2, 2, 4, 4)
    assert [r.worker for r in run.roles] == [0, 1, 2, 3]


def test_parameter_server_roles_in_each_framework():
    tf = spec("tf", "parameter-server", "parallel.replicas=2", "sync.parameter_servers=2")
    assert [(r.task, r.index, r.worker) for r in tf.roles] == [
        ("chief", 0, None),
        ("worker", 0, 0),
        ("worker", 1, 1),
        ("ps", 0, None),
        ("ps", 1, None),
    ]
    assert [r.reports_progress for r in tf.roles] == [True, False, False, False, False]
    torch = spec("torch", "parameter-server", "parallel.replicas=2", "sync.parameter_servers=2")
    assert [(r.task, r.worker) for r in torch.roles] == [
        ("server", None),
        ("server", None),
        ("worker", 0),
        ("worker", 1),
    ]
    assert torch.processes == 4 and tf.processes == 5


def test_tf_config_cluster_and_hosts_follow_the_roles():
    run = spec("tf", "parameter-server", "parallel.replicas=2")
    cluster, tasks = tf_cluster(run, ["a:1", "b:2", "c:3", "d:4"])
    assert cluster == {"chief": ["a:1"], "worker": ["b:2", "c:3"], "ps": ["d:4"]}
    assert tasks[3] == {"type": "ps", "index": 0}
    # two hosts: the workers split, the chief and the server on host 0
    assert [host_index(run, 2, rank) for rank in range(4)] == [0, 0, 1, 0]
    synchronous = spec("torch", "ddp", "parallel.replicas=2")
    assert [host_index(synchronous, 2, rank) for rank in range(2)] == [0, 1]


def test_fault_hook_reads_the_rank_back_from_tf_config(monkeypatch):
    run = spec("tf", "parameter-server", "parallel.replicas=2")
    p = plan(find("tf", "parameter-server"), run, Path("/tmp/x/run.json"), CPU, token="t", ports=[1, 2, 3, 4])
    for var in ("HOROVOD_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    ranks = []
    for env in p.envs:
        monkeypatch.setenv("TF_CONFIG", env["TF_CONFIG"])
        ranks.append(launcher_rank())
    assert ranks == [0, 1, 2, 3]
    assert json.loads(p.envs[0]["TF_CONFIG"])["task"] == {"type": "chief", "index": 0}
