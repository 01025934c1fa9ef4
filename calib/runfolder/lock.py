"""One writer per run folder: an exclusive, non-blocking lock on ``RUN/.calib.lock``.

Every command that writes a run folder (``calib run``, ``report``, ``audit --adversarial``,
``experiment``, ``label``, and the single-stage commands with ``--out``/``--run``) holds the lock
for as long as it writes. A second writer fails at once with :class:`RunFolderLocked` (one line
naming the holder's PID; exit 2 from the CLI) instead of interleaving manifests and outputs.
Readers (``calib validate``, ``calib audit`` without ``--adversarial``) do not take it.

The lock is an OS advisory lock (``fcntl.flock``) on the lock file, so the kernel releases it when
its holder dies, even by ``kill -9``. The file itself stays behind with the dead holder's PID; the
next writer acquires the lock, notices the file named another process, logs that it takes the lock
over, and writes its own PID. On a platform without ``fcntl`` the folder is not locked (a warning
says so).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from calib.errors import CalibError

log = logging.getLogger(__name__)

from calib.runfolder.artefacts import LOCK as LOCK_NAME


class RunFolderLocked(CalibError):
    """Another process is writing this run folder."""


def _read_holder(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """Exclusive lock on a run folder, as a context manager (re-entrant within one process).

    Args:
        folder: the run folder.
        command: what holds the lock (recorded for the message another writer sees).
        create: create a missing folder; otherwise a missing folder is not locked (the command using it
            fails on its own, with its own message, and nothing is left behind).
    Raises:
        RunFolderLocked: another live process holds it.
    """

    _held: dict[Path, int] = {}  # folder -> depth, for nested use in one process

    def __init__(self, folder: str | os.PathLike[str], command: str = "calib", create: bool = False) -> None:
        self.folder = Path(folder).resolve()
        self.path = self.folder / LOCK_NAME
        self.command, self.create = command, create
        self._fd: int | None = None
        self._active = False

    def __enter__(self) -> "RunLock":
        depth = RunLock._held.get(self.folder, 0)
        if depth:
            RunLock._held[self.folder] = depth + 1
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise CalibError(f"run folder {self.folder} is a file, not a folder; choose another --out")
        if self.create:
            above = next((p for p in self.folder.parents if p.exists()), None)
            if above is not None and not above.is_dir():
                raise CalibError(f"run folder {self.folder} cannot be made: {above} is a file, not a folder")
            self.folder.mkdir(parents=True, exist_ok=True)
        elif not self.folder.is_dir():
            return self
        self._active = True
        previous = _read_holder(self.path)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux/macOS
            log.warning("%s: no fcntl on this platform; the run folder is not locked", self.folder)
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._locked(_read_holder(self.path)) from None
            try:  # the file we locked may have been unlinked by a holder that just finished
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._fd = fd
        self._write_holder(fd)
        if previous.get("pid") not in (None, os.getpid()):
            log.warning("%s: taking over the lock left by PID %s (%s), which no longer holds it",
                        self.folder, previous.get("pid"), previous.get("command", "?"))
        RunLock._held[self.folder] = 1
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._active and self.folder not in RunLock._held:
            return
        depth = RunLock._held.get(self.folder, 0) - 1
        if depth > 0:
            RunLock._held[self.folder] = depth
            return
        RunLock._held.pop(self.folder, None)
        try:
            self.path.unlink()  # a clean exit leaves nothing behind
        except OSError:
            pass
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    # ---- helpers ----------------------------------------------------------------------------------
    def _holder_doc(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[:8]}).encode()

    def _write_holder(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._holder_doc(), 0)
        os.fsync(fd)

    def _locked(self, holder: dict) -> RunFolderLocked:
        pid = holder.get("pid", "?")
        what = holder.get("command", "another calib process")
        return RunFolderLocked(f"run folder {self.folder} is being written by PID {pid} ({what}); wait for it "
                               f"to finish or use another folder")
