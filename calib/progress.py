"""Progress with an ETA for long loops: a rich bar on a terminal, and plain log lines everywhere else.

``progress(enabled)`` yields one object with rich's task API (``add_task``, ``update``, ``advance``).
On an interactive terminal with ``enabled`` it draws rich bars. Otherwise (``--no-progress``, output
to a file or a pipe, CI) it writes a line to the ``calib.progress`` logger at most every
``LOG_EVERY`` seconds per task, and one when a task that took longer ends::

    statistics: 120/630 (19 %), 1m20s elapsed, ETA 5m40s [input/linf exact class-pair matrix]

The ETA is the elapsed time scaled by the remaining share of the work (the rate so far).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("calib.progress")
LOG_EVERY = 30.0


def _fmt(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    status: str = ""
    start: float = field(default_factory=time.perf_counter)
    logged: float = field(default_factory=time.perf_counter)
    finished: bool = False


class LogProgress:
    """rich's task API, reported as periodic log lines with an ETA (see the module docstring)."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self.tasks: dict[int, _Task] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "LogProgress":
        """Also log from a background thread, so one long step between updates still reports."""
        def beat() -> None:
            while not self._stop.wait(self.every / 2):
                for t in list(self.tasks.values()):
                    self._maybe_log(t)

        self._thread = threading.Thread(target=beat, name="calib-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = _Task(description, total, status=str(fields.get("status", "")))
        return tid

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, status: str | None = None, **_: Any) -> None:
        t = self.tasks.get(task_id)
        if t is None:
            return
        if total is not None:
            t.total = total
        if completed is not None:
            t.completed = completed
        if advance:
            t.completed += advance
        if status is not None:
            t.status = str(status)
        self._maybe_log(t)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def line(self, t: _Task) -> str:
        elapsed = time.perf_counter() - t.start
        status = f" [{t.status}]" if t.status else ""
        if t.total:
            share = min(t.completed / t.total, 1.0)
            eta = elapsed * (1 - share) / share if share > 0 else float("nan")
            eta_s = _fmt(eta) if share > 0 else "unknown"
            return (f"{t.description}: {t.completed:.4g}/{t.total:.4g} ({100 * share:.0f} %), {_fmt(elapsed)} elapsed, "
                    f"ETA {eta_s}{status}")
        return f"{t.description}: {t.completed:g} done, {_fmt(elapsed)} elapsed{status}"

    def _maybe_log(self, t: _Task) -> None:
        with self._lock:
            if t.finished:
                return
            now = time.perf_counter()
            done = t.total is not None and t.completed >= t.total
            if now - t.logged >= self.every or (done and now - t.start >= self.every):
                log.info("%s", self.line(t))
                t.logged = now
            t.finished = done


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[Any]:
    """A rich ``Progress`` (bar, count, elapsed, ETA, free-text status) on a terminal, else
    :class:`LogProgress`."""
    from rich.console import Console

    if not enabled or not Console(stderr=False).is_terminal:
        reporter = LogProgress().start()
        try:
            yield reporter
        finally:
            reporter.stop()
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}"), transient=False)
    with bar:
        yield bar
