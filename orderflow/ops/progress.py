"""The replay's live view: one rich progress bar per topic-partition with work to do, events/s and lag."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from orderflow.ops.replay import PartitionProgress


class EventsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:>8.0f} ev/s")


class ProgressView:
    """Feed it `update(progress)` from the replay's watch loop; a partition with nothing to replay gets no bar."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), EventsPerSecond(),
            TextColumn("lag {task.fields[lag]:>7}"), TimeElapsedColumn(), console=console,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> ProgressView:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, progress: list[PartitionProgress]) -> None:
        for p in progress:
            name = f"{p.tp.topic}[{p.tp.partition}]"
            total = p.goal - p.start
            if total <= 0 and name not in self._tasks:
                continue
            if name not in self._tasks:
                self._tasks[name] = self._progress.add_task(name, total=total, lag=p.lag)
            done = min(max(0, p.committed - p.start), total)
            self._progress.update(self._tasks[name], completed=done, lag=p.lag)
