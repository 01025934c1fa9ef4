"""Progress bars with ETA for long loops (rich), silenced for tests and non-interactive use."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class _Silent:
    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[Progress | _Silent]:
    """A rich ``Progress`` (bar, count, elapsed, ETA, free-text status) or a no-op stand-in."""
    if not enabled:
        yield _Silent()
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}"), transient=False)
    with bar:
        yield bar
