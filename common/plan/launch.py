"""Launch planning as pure functions: an implementation and a run -> the commands and environments that
start it through the engine's own launcher. Nothing is spawned here (tests check plans directly)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xfw.common.errors import UserError
from xfw.common.execute.hosts import INTERFACE, HostSet
from xfw.common.plan.machine import Machine, gpu_of_rank, ranks_share_a_gpu
from xfw.common.plan.runspec import RunSpec
from xfw.common.strategies.base import Implementation, Launcher

WORKER_MODULE = "xfw.cli.worker"
# Every process of a run inherits this variable, so the parent can find and kill all of them, even those
# that a launcher moved to a session of its own.
TOKEN_VAR = "XFW_RUN_TOKEN"
# The pid of the xfw process that started the run: each worker watches it and ends the run if it dies (even
# by SIGKILL). Absent under a user's own launcher, where nobody is to be outlived.
PARENT_VAR = "XFW_PARENT_PID"
# Test hook: "PORT,PORT,..." for the first try of a TF_CONFIG run (to collide on purpose). Unset in normal use.
PORTS_VAR = "XFW_TEST_RENDEZVOUS_PORTS"
# Set for the TF_CONFIG workers of a run whose workers share a GPU (they must not use NCCL).
SHARED_GPU_VAR = "XFW_RANKS_SHARE_A_GPU"


@dataclass(frozen=True)
class LaunchPlan:
    commands: list[list[str]]  # one entry per process the parent starts
    envs: list[dict[str, str]]  # added to the parent's environment, one per command


def base_env(run: RunSpec, token: str) -> dict[str, str]:
    cfg = run.config
    env = {
        TOKEN_VAR: token,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(cfg.parallel.threads_per_replica),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MPLBACKEND": "Agg",
    }
    if cfg.runtime.determinism:
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"  # oneDNN rounds differently; off for parity
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # needed by torch's deterministic mode on CUDA
    return env


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """Ports for the workers to bind, free now and outside the kernel's ephemeral range: a port the kernel
    hands out for a bind to port 0 or an outgoing connection could be taken between this choice and the
    workers' bind; one outside it is taken only by a process asking for that very number. If that happens the
    worker fails at once (address in use) and the caller retries with others."""
    rng = rng or random.SystemRandom()
    low, high = _ephemeral_range()
    candidates = [p for p in range(10000, 65536) if not low <= p <= high] or list(range(1024, 65536))
    ports: list[int] = []
    while len(ports) < count:
        port = rng.choice(candidates)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # all interfaces: also taken if someone listens on one of them
            except OSError:
                continue
        ports.append(port)
    return ports


def rendezvous_ports(count: int, attempt: int) -> list[int]:
    forced = os.environ.get(PORTS_VAR, "")
    if attempt == 0 and forced:
        return [int(p) for p in forced.split(",")][:count]
    return free_ports(count)


def horovodrun_executable() -> str:
    beside = Path(sys.executable).with_name("horovodrun")
    found = str(beside) if beside.exists() else shutil.which("horovodrun")
    if not found:
        raise UserError("horovodrun is not installed (run `make setup`)")
    return found


@dataclass(frozen=True)
class LaunchRequest:
    """What every planner is given: the run, its run.json, the parent's environment for its processes, the
    machine, and (multi-process launchers) the rendezvous ports and the virtual hosts it spans."""

    impl: Implementation
    run: RunSpec
    worker: list[str]  # the worker command: python -m xfw.cli.worker RUN_JSON
    env: dict[str, str]
    machine: Machine
    ports: list[int] | None
    network: HostSet | None


def plan(
    impl: Implementation,
    run: RunSpec,
    run_json: Path,
    machine: Machine,
    token: str,
    ports: list[int] | None = None,
    network: HostSet | None = None,
) -> LaunchPlan:
    """`network` (virtual hosts, common/execute/hosts.py): the engine's multi-node launch, one launcher or worker
    per host, each in its host; None: every process on this machine's loopback."""
    worker = [sys.executable, "-m", WORKER_MODULE, str(run_json)]
    env = base_env(run, token) | {PARENT_VAR: str(os.getpid())}
    request = LaunchRequest(impl, run, worker, env, machine, ports, network)
    planners = HOST_PLANNERS if network and impl.launcher != Launcher.PROCESS else PLANNERS
    return planners[impl.launcher](request)


def _plain_process(r: LaunchRequest) -> LaunchPlan:
    return LaunchPlan([r.worker], [r.env])


def _torchrun(r: LaunchRequest) -> LaunchPlan:
    # --standalone: a local rendezvous on a free port; --max-restarts 0: a failure fails the run.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={r.run.processes}",
        "--max-restarts=0",
        "-m",
        WORKER_MODULE,
        r.worker[-1],
    ]
    return LaunchPlan([cmd], [r.env | {"MASTER_ADDR": "127.0.0.1"}])


def _horovodrun(r: LaunchRequest) -> LaunchPlan:
    n = r.run.processes
    cmd = [horovodrun_executable(), "-np", str(n), "-H", f"localhost:{n}", "--gloo", *_horovod_flags(r.run)]
    # Horovod: lets rank 0 record its timeline around the profiled steps (common.breakdown.HorovodTimeline).
    return LaunchPlan([cmd + r.worker], [r.env | {"HOROVOD_TIMELINE": "DYNAMIC"}])


def _tf_config(r: LaunchRequest) -> LaunchPlan:
    run, machine, n = r.run, r.machine, r.run.processes
    ports = r.ports or free_ports(n)
    cluster, tasks = tf_cluster(run, [f"localhost:{p}" for p in ports])
    envs = []
    for index in range(n):
        worker_env = r.env | {"TF_CONFIG": json.dumps({"cluster": cluster, "task": tasks[index]})}
        if machine.gpus:
            # One GPU per worker, or all on the first where the networks share one device.
            worker_env["CUDA_VISIBLE_DEVICES"] = str(gpu_of_rank(index, machine.gpus, run.devices))
            if ranks_share_a_gpu(n, machine.gpus, run.devices):
                worker_env[SHARED_GPU_VAR] = "1"
        envs.append(worker_env)
    return LaunchPlan([r.worker] * n, envs)


# How each launcher starts a run's processes on this machine.
PLANNERS: dict[Launcher, Callable[[LaunchRequest], LaunchPlan]] = {
    Launcher.PROCESS: _plain_process,
    Launcher.TORCHRUN: _torchrun,
    Launcher.HOROVODRUN: _horovodrun,
    Launcher.TF_CONFIG: _tf_config,
}


def _multi_host_env(r: LaunchRequest) -> dict[str, str]:
    # gloo (torch.distributed, Horovod's CPU collectives) picks its interface from the hostname otherwise, which
    # resolves outside the namespace.
    return r.env | {"GLOO_SOCKET_IFNAME": INTERFACE, "TP_SOCKET_IFNAME": INTERFACE}


def _torchrun_hosts(r: LaunchRequest) -> LaunchPlan:
    """torchrun's multi-node launch: one torchrun per host, c10d rendezvous on host 0."""
    assert r.network is not None
    hosts, run = r.network.hosts, r.run
    env = _multi_host_env(r)
    ports = r.ports or free_ports(run.processes)
    commands = [
        host.prefix()
        + [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={len(hosts)}",
            f"--node-rank={host.index}",
            f"--nproc-per-node={sum(host_index(run, len(hosts), i) == host.index for i in range(run.processes))}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={hosts[0].address}:{ports[0]}",
            f"--rdzv-id={env[TOKEN_VAR]}",
            # c10d finds out whether it hosts the rendezvous store from the hostname, which resolves outside
            # the namespace: said outright, host 0 does
            f"--rdzv-conf=is_host={'true' if host.index == 0 else 'false'}",
            f"--local-addr={host.address}",
            "--max-restarts=0",
            "-m",
            WORKER_MODULE,
            r.worker[-1],
        ]
        for host in hosts
    ]
    return LaunchPlan(commands, [env] * len(hosts))


def _tf_config_hosts(r: LaunchRequest) -> LaunchPlan:
    """One worker process per task, each started in its host, TF_CONFIG naming the hosts' addresses."""
    assert r.network is not None
    hosts, run, n = r.network.hosts, r.run, r.run.processes
    env = _multi_host_env(r)
    ports = r.ports or free_ports(n)
    host_of = [hosts[host_index(run, len(hosts), i)] for i in range(n)]
    cluster, tasks = tf_cluster(run, [f"{host_of[i].address}:{ports[i]}" for i in range(n)])
    envs = [env | {"TF_CONFIG": json.dumps({"cluster": cluster, "task": tasks[i]})} for i in range(n)]
    return LaunchPlan([host_of[i].prefix() + r.worker for i in range(n)], envs)


def _horovodrun_hosts(r: LaunchRequest) -> LaunchPlan:
    """horovodrun in host 0 starts host 0's ranks itself and the others' through its ssh launcher, whose ssh is the
    stand-in that runs the command in that host's namespace (common/execute/hosts.py)."""
    assert r.network is not None
    hosts, run = r.network.hosts, r.run
    per = run.processes // len(hosts)
    slots = ",".join(f"{h.address}:{per}" for h in hosts)
    cmd = [horovodrun_executable(), "-np", str(run.processes), "-H", slots, "--gloo", "--network-interfaces", INTERFACE]
    cmd += _horovod_flags(run)
    env = _multi_host_env(r) | r.network.namespaces_env() | {"HOROVOD_TIMELINE": "DYNAMIC"}
    return LaunchPlan([hosts[0].prefix() + cmd + r.worker], [env])


# The engines' own multi-node launches across virtual hosts: the processes split evenly over the hosts
# (host_index), every engine told to bind the host's one interface.
HOST_PLANNERS: dict[Launcher, Callable[[LaunchRequest], LaunchPlan]] = {
    Launcher.TORCHRUN: _torchrun_hosts,
    Launcher.TF_CONFIG: _tf_config_hosts,
    Launcher.HOROVODRUN: _horovodrun_hosts,
}


def tf_cluster(run: RunSpec, addresses: list[str]) -> tuple[dict, list[dict]]:
    """TF_CONFIG's cluster over the processes' addresses (in rank order) and each process's task, from the run's
    roles: every process a worker, or the tasks a strategy names (a chief, workers, ps tasks); the cluster lists
    the task types in the order their first process comes (common/worker/faults.launcher_rank reads it back)."""
    cluster: dict[str, list[str]] = {}
    for role, address in zip(run.roles, addresses):
        cluster.setdefault(role.task, []).append(address)
    return cluster, [{"type": role.task, "index": role.index} for role in run.roles]


def host_index(run: RunSpec, hosts: int, rank: int) -> int:
    """Which host process `rank` runs on: the workers split evenly in order over the hosts; a process that trains
    no batch (a server, a coordinator) on host 0, as a cluster would keep them apart from the workers'
    accelerators."""
    roles = run.roles
    workers = sum(role.worker is not None for role in roles)
    worker = roles[rank].worker
    return 0 if worker is None else worker // (workers // hosts)


def _horovod_flags(run: RunSpec) -> list[str]:
    """Horovod's tensor-fusion settings are the launcher's own flags (parallel.engine.horovod)."""
    horovod, flags = run.config.parallel.engine.horovod, []
    if horovod.fusion_threshold_mb is not None:
        flags += ["--fusion-threshold-mb", str(horovod.fusion_threshold_mb)]
    if horovod.cycle_time_ms is not None:
        flags += ["--cycle-time-ms", str(horovod.cycle_time_ms)]
    return flags


def device_cores(run: RunSpec, rank: int, available: list[int]) -> list[int] | None:
    """CPU cores this process may use, for the multi-network strategies on a machine without GPUs: a CPU
    "device" is threads_per_replica cores, device d the d-th such group. Networks that share a device are
    pinned to the same cores, so sharing is real, not two cores pretending to be one. None: no pinning."""
    if not run.kind.several_networks:
        return None
    per = run.config.parallel.threads_per_replica
    devices = [rank] if run.processes > 1 and run.devices > 1 else range(run.devices)
    return sorted({available[(d * per + t) % len(available)] for d in devices for t in range(per)})


def under_engine_launcher() -> Launcher | None:
    """Which engine launcher started this process, if any (so `xfw run` acts as a worker in place)."""
    if "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return Launcher.HOROVODRUN
    if "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        return Launcher.TORCHRUN
    if "TF_CONFIG" in os.environ:
        return Launcher.TF_CONFIG
    return None
