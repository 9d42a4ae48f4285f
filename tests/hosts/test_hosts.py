"""Multi-host runs over network namespaces (network.hosts): torchrun, TF_CONFIG and horovodrun each launch across 2
virtual hosts through their own multi-node mechanism and train what they train on one host (within the same
tolerance of one device); the bytes each host sends are measured on its link; a crashed rank ends the run as failed
with every namespace, link and process gone; leftovers of a killed xfw are swept; bad input is refused in one line.
Skipped where namespaces cannot be made (not root, no iproute2), with the reason."""

from __future__ import annotations

import json
import os
import re
import subprocess

import psutil
import pytest

from tests.helpers.cli import assert_one_line_error, run_xfw, xfw_in_process
from xfw.common.execute import hosts

pytestmark = pytest.mark.skipif(hosts.unavailable() is not None, reason=str(hosts.unavailable()))

LAUNCHERS = ("torch-ddp", "tf-multi-worker", "torch-horovod", "tf-horovod")  # torchrun, TF_CONFIG, horovodrun


def compare(out, *sets: str, env: dict | None = None, runs=LAUNCHERS) -> tuple[subprocess.CompletedProcess, dict]:
    only = [a for run_id in runs for a in ("--only", run_id)]
    args = [a for s in ("training.steps=30", *sets) for a in ("--set", s)]
    proc = run_xfw("compare", "--strategy", "mirrored", *only, *args, "--out", str(out), env=env)
    return proc, json.loads((out / "summary.json").read_text())


def leftovers(folder) -> list[str]:
    """Namespaces, links and /etc/netns folders whose xfw is gone (other tests' live runs may hold theirs), and
    processes of the runs under `folder`."""

    def gone(name: str, pattern: re.Pattern) -> bool:
        m = pattern.match(name)
        return bool(m) and not psutil.pid_exists(int(m.group(1)))

    owned = re.compile(r"^x[vb](\d+)")
    names = [ns for ns in hosts.namespaces() if gone(ns, hosts.NAME)]
    links = [p.name for p in os.scandir("/sys/class/net") if gone(p.name, owned)]
    etc = [p.name for p in hosts.NETNS_ETC.glob("xfw*") if gone(p.name, hosts.NAME)] if hosts.NETNS_ETC.exists() else []
    workers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(folder) in " ".join(p.info["cmdline"] or [])]
    return names + links + etc + [f"pid {p}" for p in workers]


def test_every_launcher_trains_across_two_hosts_as_on_one(tmp_path):
    """On one host each of these runs is within the same-framework tolerance of its single device
    (tests/frameworks/test_parity.py); across two, it must still be, and each framework's pair across frameworks too."""
    proc, two = compare(tmp_path / "two", "network.hosts=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run in two["runs"]:
        assert run["status"] == "ok", run.get("error")
        if run["id"] not in LAUNCHERS:
            assert run["network"] is None  # one-process references stay on one host
            continue
        network = run["network"]
        assert network["hosts"] == 2 and network["rate"] is None
        # every host sent at least half the gradients (float32) in each of the 30 steps: a 2-rank all-reduce
        assert min(network["bytes_sent"]) > 30 * 4 * run["parameters"] / 2
    judged = {(c["a"], c["b"]): c for c in two["comparisons"]}
    for run_id in LAUNCHERS:
        assert judged[(run_id, f"{run_id.split('-')[0]}-single")]["within_tolerance"] is True
    assert judged[("tf-horovod", "torch-horovod")]["within_tolerance"] is True
    assert leftovers(tmp_path) == []


def test_parameter_servers_across_two_hosts(tmp_path):
    """The servers (and TensorFlow's chief) on the first host, a worker on each: the second host's worker pulls and
    pushes every update's weights and gradients over its link."""
    only = [a for run_id in ("tf-parameter-server", "torch-parameter-server") for a in ("--only", run_id)]
    sets = [a for s in ("training.steps=30", "network.hosts=2") for a in ("--set", s)]
    out = tmp_path / "ps"
    proc = run_xfw("compare", "--strategy", "parameter-server", *only, *sets, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run in json.loads((out / "summary.json").read_text())["runs"]:
        assert run["status"] == "ok", run.get("error")
        if run["strategy"] != "parameter-server":
            continue  # the one-device references, on one host
        assert run["asynchrony"]["updates"] == 30
        # the second host's worker sent at least its updates' gradients (float32) over its link
        per_worker = run["asynchrony"]["updates_per_worker"]
        pushed = (per_worker[1] if per_worker else 1) * 4 * run["parameters"]
        assert run["network"]["hosts"] == 2 and run["network"]["bytes_sent"][1] >= pushed
    assert leftovers(tmp_path) == []


def test_a_crashed_rank_on_the_second_host_fails_the_run_and_leaves_nothing(tmp_path):
    env = {"XFW_INJECT_FAULT": "torch-ddp:crash-in-training:1"}
    # the crashing run and one other (whose result must be kept); every launcher across hosts is the test above
    launched = ("torch-ddp", "tf-multi-worker")
    proc, summary = compare(tmp_path / "crash", "network.hosts=2", "runtime.timeout_s=120", env=env, runs=launched)
    runs = {r["id"]: r for r in summary["runs"]}
    assert proc.returncode == 1
    assert runs["torch-ddp"]["status"] == "failed" and "fault injected" in runs["torch-ddp"]["error"]
    assert runs["tf-multi-worker"]["status"] == "ok"  # the others' runs are kept
    assert leftovers(tmp_path) == []


def test_leftovers_of_a_killed_xfw_are_swept():
    dead = 4_000_000  # above pid_max: no process has it
    assert not psutil.pid_exists(dead)
    name = f"xfw{dead}h0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    (hosts.NETNS_ETC / name).mkdir(parents=True, exist_ok=True)
    removed = hosts.sweep_stale()
    assert name in removed and name not in hosts.namespaces() and not (hosts.NETNS_ETC / name).exists()


def test_rate_limit_and_bad_network_input():
    for sets, expected in (
        (["network.rate=1gbit"], "network.rate limits the links between hosts; it needs network.hosts of 2"),
        (["network.hosts=2", "network.rate=fast"], "'fast' is not a rate tc understands"),
        (["network.hosts=3"], "network.hosts 3 does not divide the 2 replicas"),
        (["network.hosts=0"], "network.hosts"),
        (
            ["network.hosts=4", "parallel.replicas=4", "training.global_batch=32"],
            f"than this machine's {os.cpu_count()} cores",
        ),
        (["network.hosts=2"], "network.hosts applies to single-device and data-parallel strategies"),
    ):
        strategy = "pipeline" if sets == ["network.hosts=2"] else "mirrored"
        args = [a for s in sets for a in ("--set", s)]
        assert_one_line_error(xfw_in_process("compare", "--strategy", strategy, *args), expected)
