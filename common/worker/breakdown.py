"""Where a step's time goes: a few training steps run under the framework's own profiler (the torch profiler, the
TensorFlow profiler), whose events the framework sorts into communication, optimizer update, input and compute;
this file turns those intervals into seconds per step.

Each category's time is the wall-clock time during which at least one of its events was running (the union of
their intervals, on any thread or device), so work done in parallel by several threads is not counted twice. Where
two categories ran at once, the time goes to the first in PRIORITY: communication that overlaps the backward pass
(DDP's buckets, MirroredStrategy's collectives, Horovod's background all-reduces) is counted as communication, and
the overlap is reported apart (`overlap_s`). Rest is the measured step time minus all of them: Python, the
framework's dispatch and whatever no profiler event covers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

CATEGORIES = ("compute", "communication", "update", "input")
PRIORITY = ("communication", "update", "input", "compute")  # who gets the time where two categories overlap

Interval = tuple[float, float]  # (start, end) in seconds, on the profiler's clock


def merged(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of intervals as sorted, disjoint intervals."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def length(intervals: list[Interval]) -> float:
    return sum(e - s for s, e in intervals)


def minus(intervals: list[Interval], taken: list[Interval]) -> list[Interval]:
    """The parts of disjoint sorted `intervals` outside disjoint sorted `taken`."""
    out, j = [], 0
    for start, end in intervals:
        while j < len(taken) and taken[j][1] <= start:
            j += 1
        k, cursor = j, start
        while k < len(taken) and taken[k][0] < end:
            if taken[k][0] > cursor:
                out.append((cursor, taken[k][0]))
            cursor = max(cursor, taken[k][1])
            k += 1
        if cursor < end:
            out.append((cursor, end))
    return out


def intersection_length(a: list[Interval], b: list[Interval]) -> float:
    return length(a) - length(minus(a, b))


def step_breakdown(events: dict[str, list[Interval]], wall_s: float, input_wait_s: float, steps: int) -> dict:
    """Seconds per step of each category over `steps` profiled steps that took `wall_s` in all. `events`: the
    profiler's intervals per category; `input_wait_s`: what the training loop measured waiting for the steps'
    inputs outside the step (the profiler may see part of it as input events too: the larger counts)."""
    unions = {c: merged(events.get(c, [])) for c in CATEGORIES}
    exclusive: dict[str, float] = {}
    taken: list[Interval] = []
    for category in PRIORITY:
        own = minus(unions[category], taken)
        exclusive[category] = length(own)
        taken = merged([*taken, *own])
    exclusive["input"] = max(exclusive["input"], input_wait_s)
    overlap = intersection_length(unions["communication"], unions["compute"])
    if ENGINE_COMMUNICATION in events:
        # Horovod's activity, on its own clock: where the framework's profiler saw no communication (TensorFlow,
        # whose step waits for Horovod's op), all of it; else (torch, whose step waits in synchronize) what ran
        # beyond that wait was hidden behind the backward pass.
        engine = length(merged(events[ENGINE_COMMUNICATION]))
        if exclusive["communication"] == 0:
            exclusive["communication"] = engine
        else:
            overlap += max(0.0, engine - exclusive["communication"])
    busy = sum(exclusive.values())
    per_step = {f"{c}_s": exclusive[c] / steps for c in CATEGORIES}
    return {
        "steps": steps,
        "step_s": wall_s / steps,
        **per_step,
        "rest_s": max(0.0, wall_s - busy) / steps,
        "overlap_s": overlap / steps,
    }


class HorovodTimeline:
    """A framework's StepProfiler plus Horovod's own timeline (hvd.start_timeline, which horovodrun allows with
    HOROVOD_TIMELINE=DYNAMIC, set by common.launch): Horovod's all-reduces run in its background thread, where
    the framework's profiler does not see them. The union of the timeline's per-tensor activities (negotiation and
    all-reduce) is the engine's communication time, measured on Horovod's clock (see step_breakdown)."""

    def __init__(self, hvd, profiler):
        self.hvd, self.profiler = hvd, profiler
        # horovodrun started by hand without it: Horovod refuses to start a timeline, and the profile goes without
        self.recording = os.environ.get("HOROVOD_TIMELINE") == "DYNAMIC"
        self.description = profiler.description + (
            "; Horovod's timeline for its background all-reduces"
            if self.recording
            else "; no Horovod timeline (horovodrun launched without HOROVOD_TIMELINE=DYNAMIC): Horovod's "
            "background all-reduces are not seen and their time shows as rest"
        )

    def start(self) -> None:
        self.profiler.start()
        if self.recording:
            self.folder = tempfile.mkdtemp(prefix="xfw-horovod-timeline-")
            self.hvd.start_timeline(str(Path(self.folder) / "timeline.json"), mark_cycles=False)

    def stop(self) -> dict[str, list[Interval]]:
        if not self.recording:
            return self.profiler.stop()
        self.hvd.stop_timeline()
        events = self.profiler.stop()
        try:
            events[ENGINE_COMMUNICATION] = timeline_activities((Path(self.folder) / "timeline.json").read_text())
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        return events


ENGINE_COMMUNICATION = "engine_communication"  # intervals on the engine's own clock (Horovod's timeline)


def timeline_activities(text: str) -> list[Interval]:
    """The top-level activities of a Horovod timeline (Chrome trace events, one "process" per tensor, B/E pairs
    nested per tensor; the file may lack its closing bracket while Horovod runs) as (start, end) seconds."""
    body = text.strip().rstrip(",")
    events = json.loads(body if body.endswith("]") else body + "]")
    open_at: dict[int, list[float]] = {}
    spans = []
    for event in events:
        stack = open_at.setdefault(event.get("pid", 0), [])
        if event.get("ph") == "B":
            stack.append(event["ts"] / 1e6)
        elif event.get("ph") == "E" and stack:
            start = stack.pop()
            if not stack:  # a top-level activity (its sub-steps are inside it)
                spans.append((start, event["ts"] / 1e6))
    return spans
