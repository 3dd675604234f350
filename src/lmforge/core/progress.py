"""Progress bars (rate and ETA) and console output, shared by every stage.

Bars go to stderr so that stdout stays clean for machine-readable output. They can be switched off
globally (non-zero ranks in distributed runs, ``--quiet``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def is_enabled() -> bool:
    return _enabled


def info(message: str) -> None:
    if _enabled:
        console.print(message)


def warn(message: str) -> str:
    """Print one warning line (one line however wide, unless output is off); returns ``message``, which the
    stage also records in its summary's ``warnings``."""
    if _enabled:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)
    return message


class Tracker:
    """A handle to one progress bar: ``advance(n)`` and ``set(**fields)`` (shown after the bar)."""

    def __init__(self, progress: Progress | None, task_id, unit: str):
        self._progress = progress
        self._task = task_id
        self._unit = unit

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def set(self, **fields) -> None:
        if self._progress is not None:
            text = "  ".join(f"{k} {v}" for k, v in fields.items())
            self._progress.update(self._task, info=text)

    def update_total(self, total: float | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)


class _RateColumn(TextColumn):
    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        text = "" if speed is None else f"{speed:,.1f} {self.unit}/s"
        from rich.text import Text

        return Text(text, style="progress.data.speed")


@contextlib.contextmanager
def track(description: str, total: float | None = None, unit: str = "it") -> Iterator[Tracker]:
    """A progress bar with count, rate and ETA for one piece of long work."""
    if not _enabled:
        yield Tracker(None, None, unit)
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if total else TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console, transient=False, refresh_per_second=4) as progress:
        task_id = progress.add_task(description, total=total, info="")
        yield Tracker(progress, task_id, unit)
