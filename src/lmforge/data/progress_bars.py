"""One progress bar per data step, each with its documents/s (shown while ``lmforge data`` runs)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from lmforge.core import progress as core_progress


class _DocsPerSecond(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.completed and task.elapsed:
            speed = task.completed / task.elapsed  # too few samples for rich's estimate (a short run)
        return Text("" if speed is None else f"{speed:,.0f} docs/s", style="progress.data.speed")


class StepBars:
    """``with StepBars(["read", "normalize", ...], total) as bars: bars.advance("read", 64)``.

    A bar advances when documents enter its step; all bars share the expected total (None: unknown).
    Nothing is shown when progress output is off (``--quiet``, non-zero ranks).
    """

    def __init__(self, names: list[str], total: int | None) -> None:
        self._progress = None
        self._tasks: dict[str, int] = {}
        if core_progress.is_enabled():
            self._progress = Progress(
                TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(), _DocsPerSecond(),
                TimeElapsedColumn(), console=core_progress.console, transient=False, refresh_per_second=4)
            self._tasks = {name: self._progress.add_task(name, total=total) for name in names}

    def __enter__(self) -> StepBars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            for task in self._tasks.values():
                self._progress.update(task, total=self._progress.tasks[task].completed)
            self._progress.stop()

    def advance(self, name: str, n: int) -> None:
        if self._progress is not None and n and name in self._tasks:
            self._progress.advance(self._tasks[name], n)
