"""The local executor: a planned run's processes on this machine (common/execute/executor.py is the interface)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from xfw.common.execute import hosts as virtual_hosts
from xfw.common.execute import runner
from xfw.common.execute.executor import FailureKind, Progress, RunFailure, RunOutcome
from xfw.common.plan import launch
from xfw.common.plan.machine import Machine
from xfw.common.plan.runspec import RunSpec
from xfw.common.records import NetworkUse, first_problem, read_result
from xfw.common.strategies.base import Implementation, Launcher, Role
from xfw.common.worker.loop import progress_path


def _read_step(path: Path) -> int | None:
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None  # not written yet


# What a run writes into its folder. A previous run's copies are removed (a stale result.json must never pass for
# this run's) and nothing else: the folder, and whatever else is in it, may not be this invocation's to delete.
RUN_FILES = (
    "run.json",
    "result.json",
    "progress-rank*.json",
    "worker-*.log",
    ".result.json.*.tmp",
    ".progress-rank*.json.*.tmp",
)
# A worker that finds the disk full may not even manage to log why; below this much free space, the parent says so.
LOW_SPACE_BYTES = 256 * 1024


def _clear_run_files(run_dir: Path) -> None:
    if run_dir.is_dir():
        for pattern in RUN_FILES:
            for file in run_dir.glob(pattern):
                file.unlink(missing_ok=True)


def _space_note(run_dir: Path, error: str) -> str:
    """The error of a run that wrote no result, led by the likely cause when its file system is (nearly) full."""
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return error
    if free >= LOW_SPACE_BYTES:
        return error
    head, _, tail = error.partition("\n")
    return f"no space left on the output folder's file system ({free // 1024} KiB free); {head}\n{tail}"


def stall_report(run_dir: Path, roles: tuple[Role, ...], steps: int) -> str:
    """Where each rank stopped, those furthest behind first: the rank that hung is among them (the others wait
    for it in a collective, at the same step or one report later). Ranks whose role writes no progress (servers)
    are left out."""
    now = time.time()
    seen = []
    for rank in (r for r, role in enumerate(roles) if role.reports_progress):
        path = progress_path(run_dir, rank)
        step = _read_step(path)
        if step is None:
            seen.append((-1, 0.0, f"rank {rank} never reached a step"))
        else:
            quiet = now - path.stat().st_mtime
            seen.append((step, -quiet, f"rank {rank} last reported step {step}/{steps} {quiet:.0f} s before"))
    return "; ".join(text for *_, text in sorted(seen))


@dataclass(frozen=True)
class LocalRun:
    """A run submitted to the local executor. Its processes start when it is collected, in the collecting thread,
    which is where the deadline, the signal handling and the progress polling live."""

    impl: Implementation
    run: RunSpec
    timeout_s: float
    progress: Progress
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


class LocalExecutor:
    """Every process of a run on this machine, in its own session, through the engine's launcher: deadlines, the
    watchdog on the parent, token kills and rendezvous ports as common/execute/runner.py keeps them."""

    def __init__(self, resources: Machine):
        self.resources = resources

    def submit(self, impl: Implementation, run: RunSpec, timeout_s: float, progress: Progress) -> LocalRun:
        return LocalRun(impl, run, timeout_s, progress)

    def step(self, handle: LocalRun) -> int | None:
        return _read_step(progress_path(Path(handle.run.out_dir), 0))

    def cancel(self, handle: LocalRun) -> None:
        for proc in runner.token_holders(handle.token):
            proc.kill()

    def collect(self, handle: LocalRun) -> RunOutcome:
        """The rank-0 result (RunResult or NetworksResult), or a RunFailure. A run that failed because a rendezvous
        port was taken meanwhile is tried once more with other ports."""
        result = self._execute_once(handle, attempt=0)
        if isinstance(result, RunFailure) and result.port_taken:
            handle.progress.note(f"{handle.run.id}: {result.error.splitlines()[0]}; trying once more with other ports")
            result = self._execute_once(handle, attempt=1)
        return result

    def _execute_once(self, handle: LocalRun, attempt: int) -> RunOutcome:
        h = handle
        return _execute_once(h.impl, h.run, h.timeout_s, self.resources, h.progress, h.token, attempt)


def _execute_once(
    impl: Implementation, run: RunSpec, timeout_s: float, machine: Machine, progress: Progress, token: str, attempt: int
) -> RunOutcome:
    run_dir = Path(run.out_dir)
    try:
        _clear_run_files(run_dir)
        run_json = run.write(run_dir / "run.json")
    except OSError as exc:  # the output folder filled up or lost its permissions since it was checked
        return RunFailure(FailureKind.FAILED, f"cannot write {exc.filename or run_dir}: {exc.strerror}")
    rendezvous = impl.launcher in (Launcher.TF_CONFIG, Launcher.TORCHRUN)
    ports = launch.rendezvous_ports(run.processes, attempt) if rendezvous else None
    # Several hosts (network namespaces) for the multi-process launchers; one-process runs stay on this one.
    many = run.config.network.hosts > 1 and impl.launcher != Launcher.PROCESS
    network = virtual_hosts.VirtualHosts(run.config.network.hosts, run.config.network.rate) if many else nullcontext()
    with network as hosts:
        plan = launch.plan(impl, run, run_json, machine, token, ports, hosts)
        sent = virtual_hosts.bytes_sent(hosts.hosts) if hosts else None
        result = _launch(run, run_dir, plan, timeout_s, token, ports, progress)
        if hosts and not isinstance(result, RunFailure):
            assert sent is not None  # counted above, before the launch, whenever there are hosts
            result.network = NetworkUse.measured(run, hosts.hosts, sent, virtual_hosts.bytes_sent(hosts.hosts))
    return result


def _launch(run: RunSpec, run_dir: Path, plan, timeout_s: float, token: str, ports, progress: Progress):
    """Starts the plan's processes and waits for them; the result, or why there is none."""
    progress_file = progress_path(run_dir, 0)
    steps = run.config.training.steps

    def poll() -> None:
        step = _read_step(progress_file)
        if step is not None:
            progress.update(step)

    result_file = run_dir / "result.json"
    try:
        outcome = runner.execute(
            plan, run_dir, timeout_s, token, poll, result_file, lambda: stall_report(run_dir, run.roles, steps)
        )
    except OSError as exc:  # its log files could not be created
        return RunFailure(FailureKind.FAILED, f"cannot write {exc.filename or run_dir}: {exc.strerror}")
    if outcome.interrupted is not None and not result_file.exists():
        step = _read_step(progress_file)
        where = f"at step {step}/{steps}" if step is not None else "before its first step"
        stopped = f"{runner.interruption(outcome.interrupted)} after {outcome.wall_s:.1f} s, {where}"
        return RunFailure(FailureKind.INTERRUPTED, f"{stopped}; its processes were ended")
    if not result_file.exists():
        if outcome.port_taken:
            taken = f"one of the rendezvous ports {', '.join(map(str, ports or []))}" if ports else "a rendezvous port"
            error = outcome.error(timeout_s).replace("a rendezvous port", taken, 1)
            return RunFailure(FailureKind.FAILED, error, port_taken=True)
        return RunFailure(FailureKind.FAILED, _space_note(run_dir, outcome.error(timeout_s)))
    try:
        result = read_result(json.loads(result_file.read_text()))
    except (ValueError, ValidationError) as err:  # a worker that wrote something else is a failed run, not a crash
        return RunFailure(
            FailureKind.FAILED, f"{result_file} is not a valid result: {first_problem(err)}\n{outcome.error(timeout_s)}"
        )
    if not outcome.ok:
        # Rank 0 writes result.json only after gathering every rank's outcome, so the run's work is complete
        # and kept; a process that then fails (seen: a rare SIGABRT in gloo's teardown) is recorded, not hidden.
        result.teardown_error = outcome.error(timeout_s).splitlines()[0]
    return result
