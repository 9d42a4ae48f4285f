"""Progress on stderr while runs go (which run, which step, elapsed); never mixed into the data files."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
            TextColumn("steps"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = None
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
        self.task = self.bar.add_task(label, total=steps)

    def update(self, step: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=step)

    def finish(self, label: str, status: str, detail: str) -> None:
        took = f" in {time.monotonic() - self.started:.1f} s" if status != "skipped" else ""
        self.console.print(f"{MARKS[status]} {escape(label)}{took}: {escape(detail)}", highlight=False, markup=True)

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note[/] {escape(text)}", highlight=False, markup=True)
