"""Runs a launch plan under a deadline: every process of a run is started in its own session, its output
goes to a log file (never parsed as data), and whatever happens, nothing is left running afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from xfw.common.launch import TOKEN_VAR, LaunchPlan

# After one process of a multi-process run fails, the others get this long to fail or finish on their own
# (a dead Horovod rank fails the job in about 10 s) before they are killed.
FAILURE_GRACE_S = 20.0
POLL_S = 0.2
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class Outcome:
    returncodes: list[int | None]
    timed_out: bool
    wall_s: float
    logs: list[Path]

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(code == 0 for code in self.returncodes)

    def error(self, timeout_s: float) -> str:
        if self.timed_out:
            head = f"timed out after {timeout_s:g} s (runtime.timeout_s)"
        else:
            bad = [(i, c) for i, c in enumerate(self.returncodes) if c != 0]
            head = "; ".join(f"process {i} {_describe_exit(c)}" for i, c in bad) or "exited without writing its result"
        tail = log_tail(self.logs, self.returncodes)
        if tail.startswith("first error: "):  # the root cause belongs on the one-line summary
            first, _, tail = tail.partition("\n")
            head = f"{head}: {first.removeprefix('first error: ')}"
        return f"{head}\n{tail}"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "was killed after another process failed"
    if code < 0:
        return f"died of signal {signal.Signals(-code).name}"
    return f"exited with status {code}"


# The last line of a Python traceback ("RuntimeError: ..."), possibly behind a launcher's "[1]<stderr>:".
LAUNCHER_PREFIX = re.compile(r"^(?:\[\d+\]<std\w+>:|\[rank\d+\]:)")
EXCEPTION_LINE = re.compile(r"^(?:\[\d+\]<std\w+>:|\[rank\d+\]:)?\s*[\w.]*(?:Error|Exception|Exit)\b: ")


def log_tail(logs: list[Path], returncodes: list[int | None]) -> str:
    """The first exception any process raised (the root cause; launchers print their own summary after
    it), then the last lines of the log of the first process that failed."""
    order = sorted(range(len(logs)), key=lambda i: returncodes[i] in (0, None))
    texts = {}
    for i in order:
        try:
            texts[i] = logs[i].read_text(errors="replace").splitlines()
        except OSError:
            texts[i] = []
    first_error = next(
        (
            LAUNCHER_PREFIX.sub("", line).strip()
            for i in order
            for line in texts[i]
            if EXCEPTION_LINE.match(line) and "ChildFailedError" not in line
        ),
        None,
    )
    first_error = first_error or next((c for i in order if (c := _torchrun_root_cause(texts[i]))), None)
    parts = [f"first error: {first_error}"] if first_error else []
    for i in order:
        if texts[i]:
            parts.append(f"[{logs[i].name}, last lines]\n" + "\n".join(texts[i][-LOG_TAIL_LINES:]))
            break
    return "\n".join(parts) or "(the processes printed nothing)"


def _torchrun_root_cause(lines: list[str]) -> str | None:
    """torchrun's "Root Cause" block (a rank killed by a signal raises no Python exception), in one line."""
    try:
        block = lines[next(i for i, line in enumerate(lines) if line.startswith("Root Cause")) :]
    except StopIteration:
        return None
    fields = dict(line.split(":", 1) for line in block[1:8] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "rank" not in fields or "exitcode" not in fields:
        return None
    return f"rank {fields['rank']} exitcode {fields['exitcode']}"


def kill_run(procs: list[subprocess.Popen], token: str) -> None:
    """SIGTERM then SIGKILL to each process group, then to any process still carrying the run's token."""
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
        for proc in _token_holders(token):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and (any(p.poll() is None for p in procs) or _token_holders(token)):
            time.sleep(0.05)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=1)


def _token_holders(token: str) -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(TOKEN_VAR) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def execute(
    plan: LaunchPlan,
    run_dir: Path,
    timeout_s: float,
    token: str,
    on_poll: Callable[[], None] | None = None,
) -> Outcome:
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = [run_dir / f"worker-{i}.log" for i in range(len(plan.commands))]
    procs: list[subprocess.Popen] = []
    start = time.monotonic()
    timed_out = False
    try:
        for cmd, env, log in zip(plan.commands, plan.envs, logs):
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        env=os.environ | env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        failed_at = None
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            now = time.monotonic()
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = now
            if failed_at is not None and now - failed_at > FAILURE_GRACE_S:
                break
            if now - start > timeout_s:
                timed_out = True
                break
            if on_poll:
                on_poll()
            time.sleep(POLL_S)
    finally:
        # Also on KeyboardInterrupt: a run never outlives the command that started it.
        kill_run(procs, token)
    return Outcome([p.returncode for p in procs], timed_out, time.monotonic() - start, logs)
