"""Runs a launch plan under a deadline: every process of a run is started in its own session, its output
goes to a log file (never parsed as data), and whatever happens, nothing is left running afterwards.

Signals: inside `deferred_signals()` (the parent's whole compare or run), SIGINT, SIGTERM and SIGHUP only
note that xfw was asked to stop; the poll loop sees the note, ends the run in flight and the caller records it
and writes its files. No signal raises in the middle of the clean-up, so a second Ctrl-C (or `timeout`
relaying SIGINT before its SIGTERM) cannot leave workers behind. If xfw itself is SIGKILLed, each worker's
watchdog (cli/worker.py) ends the run's processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from xfw.common.plan.launch import TOKEN_VAR, LaunchPlan

# After one process of a multi-process run fails, the others get this long to fail or finish on their own
# (a dead Horovod rank fails the job in about 10 s) before they are killed.
FAILURE_GRACE_S = 20.0
# Once rank 0 has written result.json (after gathering every rank's outcome), the processes only have to exit:
# one that has not after this long is stuck in teardown, and is ended rather than waited for until the deadline.
EXIT_GRACE_S = 10.0
# kill_run: how long SIGTERM may take before SIGKILL, and how long to wait for SIGKILL to be done.
TERM_GRACE_S = 3.0
KILL_WAIT_S = 2.0
POLL_S = 0.2
LOG_TAIL_LINES = 15
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A log line saying a rendezvous port was taken: the run failed because of the port, not of the code.
PORT_TAKEN = re.compile(r"address already in use|EADDRINUSE|Could not start gRPC server", re.IGNORECASE)

_stop_signal: int | None = None


def _note_signal(signum, frame) -> None:
    global _stop_signal
    if _stop_signal is None:
        _stop_signal = signum  # the first one decides the exit status; later ones change nothing


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP become a note read by interrupted(), for as long as the block runs."""
    global _stop_signal
    _stop_signal = None
    previous = {sig: signal.signal(sig, _note_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted() -> int | None:
    """The first stop signal received inside deferred_signals(), or None."""
    return _stop_signal


@dataclass(frozen=True)
class Outcome:
    returncodes: list[int | None]
    timed_out: bool
    wall_s: float
    logs: list[Path]
    interrupted: int | None = None  # the stop signal that ended the run
    stalled: str = ""  # on a timeout: which ranks stopped making progress, and where
    lingered: bool = False  # the result was written but a process did not exit within EXIT_GRACE_S
    # Bytes of each log written before xfw began killing: what the processes said of themselves, not of the kill.
    log_sizes: list[int] | None = None

    @property
    def ok(self) -> bool:
        return not (self.timed_out or self.lingered) and all(code == 0 for code in self.returncodes)

    @property
    def port_taken(self) -> bool:
        """Failed because a rendezvous port was in use (another process took it after it was chosen)."""
        return not self.ok and any(PORT_TAKEN.search(line) for line in _log_lines(self.logs, self.log_sizes))

    def error(self, timeout_s: float) -> str:
        if self.timed_out:
            head = f"timed out after {timeout_s:g} s (runtime.timeout_s)"
            head += f": {self.stalled}" if self.stalled else ""
        elif self.lingered:
            head = f"a process did not exit within {EXIT_GRACE_S:g} s of the result being written (ended by xfw)"
        elif self.port_taken:
            head = "a rendezvous port was already in use (another process took it after xfw chose it)"
        else:
            bad = [(i, c) for i, c in enumerate(self.returncodes) if c != 0]
            head = "; ".join(f"process {i} {_describe_exit(c)}" for i, c in bad) or "exited without writing its result"
        tail = log_tail(self.logs, self.returncodes, self.log_sizes)
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


# What a rank reports when another rank (not it) failed: its connections to it closed or reset.
PEER_LOST = re.compile(
    r"Connection (closed by peer|reset by peer|refused)|Broken pipe|DistNetworkError|DistBackendError|"
    r"gloo/transport|Socket Timeout|timed out",
    re.IGNORECASE,
)


def _read_log(log: Path, size: int | None = None) -> list[str]:
    try:
        with open(log, "rb") as f:
            return f.read(size).decode(errors="replace").splitlines()
    except OSError:
        return []


def _log_lines(logs: list[Path], sizes: list[int] | None) -> list[str]:
    return [line for i, log in enumerate(logs) for line in _read_log(log, sizes[i] if sizes else None)]


def _log_sizes(logs: list[Path]) -> list[int]:
    return [log.stat().st_size if log.exists() else 0 for log in logs]


def log_tail(logs: list[Path], returncodes: list[int | None], sizes: list[int] | None = None) -> str:
    """The first exception any process raised (the root cause; launchers print their own summary after
    it), then the last lines of the log of the first process that failed. `sizes`: look for the root cause
    only in what each log held before xfw killed the run (a SignalException from xfw's own SIGTERM is not it)."""
    order = sorted(range(len(logs)), key=lambda i: returncodes[i] in (0, None))
    texts = {i: _read_log(logs[i]) for i in order}
    before_kill = {i: _read_log(logs[i], sizes[i]) for i in order} if sizes else texts
    errors = [
        LAUNCHER_PREFIX.sub("", line).strip()
        for i in order
        for line in before_kill[i]
        if EXCEPTION_LINE.match(line) and "ChildFailedError" not in line
    ]
    # Where each host's launcher has a log of its own, the others' ranks report the lost peer as well: the cause is
    # the error that is not a lost connection, where there is one.
    first_error = next((e for e in errors if not PEER_LOST.search(e)), errors[0] if errors else None)
    first_error = first_error or next((c for i in order if (c := _torchrun_root_cause(before_kill[i]))), None)
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
    """SIGTERM then SIGKILL to each process group, then to any process still carrying the run's token.
    Called inside deferred_signals() by the parent, so no signal stops it half-way."""
    for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, KILL_WAIT_S)):
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
        for proc in token_holders(token):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and (any(p.poll() is None for p in procs) or token_holders(token)):
            time.sleep(0.05)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=1)


def token_holders(token: str) -> list[psutil.Process]:
    """Every live process but this one whose environment carries the run's token."""
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
    result_file: Path | None = None,
    stalled: Callable[[], str] | None = None,
) -> Outcome:
    """`result_file`: once it exists, the processes get EXIT_GRACE_S to exit. `stalled`: called on a timeout,
    before the kill, to say which ranks stopped where."""
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = [run_dir / f"worker-{i}.log" for i in range(len(plan.commands))]
    procs: list[subprocess.Popen] = []
    start = time.monotonic()
    timed_out = lingered = False
    signum = None
    stall = ""
    sizes = None
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
        failed_at = written_at = None
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            signum = interrupted()
            if signum is not None:
                break
            now = time.monotonic()
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = now
                if any(PORT_TAKEN.search(line) for line in _log_lines(logs, None)):
                    break  # the others would only wait for a peer that will never come
            if failed_at is not None and now - failed_at > FAILURE_GRACE_S:
                break
            if written_at is None and result_file is not None and result_file.exists():
                written_at = now
            if written_at is not None and now - written_at > EXIT_GRACE_S:
                lingered = True
                break
            if now - start > timeout_s:
                timed_out = True
                stall = stalled() if stalled else ""
                break
            if on_poll:
                on_poll()
            time.sleep(POLL_S)
        sizes = _log_sizes(logs)
    finally:
        # Also on an unexpected exception: a run never outlives the command that started it.
        kill_run(procs, token)
    codes = [p.returncode for p in procs]
    return Outcome(codes, timed_out, time.monotonic() - start, logs, signum, stall, lingered, sizes)


def interruption(signum: int) -> str:
    return f"interrupted by {signal.Signals(signum).name}"
