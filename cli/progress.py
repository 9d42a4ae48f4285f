"""Progress on stderr while runs go (which run, which step, elapsed); never mixed into the data files."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

MARKS = {
    "ok": "[green]ok[/]",
    "failed": "[red]FAILED[/]",
    "skipped": "[dim]skipped[/]",
    "interrupted": "[red]STOPPED[/]",
}


class RichProgress:
    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[left]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            speed_estimate_period=24 * 3600,  # the time left of a study: from its whole pace, not the last runs'
        )
        self.task: TaskID | None = None
        self.started = 0.0

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start(self, label: str, steps: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.started = time.monotonic()
        self.task = self.bar.add_task(label, total=steps, unit="steps", left="left")

    def update(self, step: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=step)

    def finish(self, label: str, status: str, detail: str) -> None:
        took = f" in {time.monotonic() - self.started:.1f} s" if status != "skipped" else ""
        self.console.print(f"{MARKS[status]} {escape(label)}{took}: {escape(detail)}", highlight=False, markup=True)

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note[/] {escape(text)}", highlight=False, markup=True)


class StudyProgress(RichProgress):
    """A run's bar under a study's: cells done of all, runs finished of those planned, and the time left at the
    pace so far."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.study: TaskID | None = None
        self.cells_total = 0
        self.cells_done = 0

    def cells(self, total: int, done: int, runs: int) -> None:
        self.cells_total, self.cells_done = total, done
        if done:
            self.console.print(f"resuming: {done} of {total} cells already done", highlight=False)
        self.study = self.bar.add_task(self._title(""), total=runs, unit="runs", left="left")

    def _title(self, label: str) -> str:
        return f"cell {min(self.cells_done + 1, self.cells_total)}/{self.cells_total} {escape(label)}"

    def cell(self, label: str) -> None:
        assert self.study is not None  # cells() added the study's bar before its first cell
        self.bar.update(self.study, description=self._title(label))
        task = next(t for t in self.bar.tasks if t.id == self.study)
        remaining = task.time_remaining
        left = (
            ""
            if remaining is None
            else f" (about {remaining:.0f} s left)"
            if remaining < 120
            else f" (about {remaining / 60:.0f} min left)"
        )
        self.console.print(
            f"[bold]cell {self.cells_done + 1}/{self.cells_total}[/] {escape(label)}{left}", highlight=False
        )

    def cell_done(self, label: str, status: str, errors: list[str]) -> None:
        self.cells_done += 1
        detail = "; ".join(errors[:2]) if errors else "written"
        self.console.print(f"{MARKS[status]} cell {escape(label)}: {escape(detail)}", highlight=False)

    def finish(self, label: str, status: str, detail: str) -> None:
        super().finish(label, status, detail)
        if status != "skipped" and self.study is not None:
            self.bar.advance(self.study)
