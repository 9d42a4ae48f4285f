"""The executor boundary: one interface to submit a planned run, follow its progress, cancel it and collect its typed
result. compare, study and `xfw run` go through it; common/execute/local.py runs on this machine, and a cluster
executor would put the same runs elsewhere, describing its own resources to the refusals."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from xfw.common.plan.machine import Machine
from xfw.common.plan.runspec import RunSpec
from xfw.common.records import NetworksResult, RunResult
from xfw.common.strategies.base import Implementation


class Progress(Protocol):
    def start(self, label: str, steps: int) -> None: ...
    def update(self, step: int) -> None: ...
    def finish(self, label: str, status: str, detail: str) -> None: ...
    def note(self, text: str) -> None: ...


class NoProgress:
    def start(self, label, steps):
        pass

    def update(self, step):
        pass

    def finish(self, label, status, detail):
        pass

    def note(self, text):
        pass


class FailureKind(StrEnum):
    FAILED = "failed"  # a process failed, hung past the deadline, or wrote no valid result
    INTERRUPTED = "interrupted"  # xfw was asked to stop (SIGINT, SIGTERM) while the run went


@dataclass(frozen=True)
class RunFailure:
    """A run that produced no result: why, with the root cause first and its logs' tail."""

    kind: FailureKind
    error: str
    port_taken: bool = False  # a rendezvous port was taken between its choice and the bind: worth one more try


RunOutcome = RunResult | NetworksResult | RunFailure


# What an executor hands back for a submitted run: its own kind of handle (the local executor's LocalRun).
Handle = TypeVar("Handle")


class Executor(Protocol[Handle]):
    """Where runs execute. `resources` is what the refusals read (cores, GPUs, frameworks): the executor's, not
    necessarily the machine xfw itself runs on."""

    resources: Machine

    def submit(self, impl: Implementation, run: RunSpec, timeout_s: float, progress: Progress) -> Handle: ...

    def step(self, handle: Handle) -> int | None:
        """The last step rank 0 reported (None before its first)."""
        ...

    def cancel(self, handle: Handle) -> None:
        """End every process of the run; its collect() then says it failed."""
        ...

    def collect(self, handle: Handle) -> RunOutcome:
        """Wait for the run and return its result, or why there is none."""
        ...


def execute(
    executor: Executor[Any], impl: Implementation, run: RunSpec, timeout_s: float, progress: Progress
) -> RunOutcome:
    """Submit one run and wait for it."""
    return executor.collect(executor.submit(impl, run, timeout_s, progress))
