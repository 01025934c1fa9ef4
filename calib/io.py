"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or an exception mid-write never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp (and some writers) create 0600; use the usual mode
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[BinaryIO | Any]:
    """Open a temporary file for writing that replaces ``path`` only when the block succeeds."""
    if "w" not in mode:
        raise ValueError(f"atomic_open is for writing; got mode {mode!r}")
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_npz(path: str | os.PathLike[str], arrays: dict[str, Any]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` atomically (read back with ``allow_pickle=False``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically. NaN/inf are refused (not valid JSON)."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    with atomic_open(path, "w") as fh:
        fh.write(text + "\n")


def to_jsonable(obj: Any) -> Any:
    """Plain-JSON form of results: numpy arrays/scalars -> Python, tuples -> lists, dict keys -> str,
    NaN/inf -> None (``write_json`` refuses non-finite floats; exact values live in the arrays)."""
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def read_text(path: str | os.PathLike[str], error: type[Exception], what: str) -> str:
    """A UTF-8 text file's contents, raising ``error`` with one line (``<what> not found: path`` or
    ``path: unreadable <what> (...)``) instead of OS/decoding exceptions."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise error(f"{what} not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: unreadable {what} ({exc})") from exc


def read_json(path: str | os.PathLike[str], error: type[Exception], what: str) -> Any:
    """Parse a JSON file, raising ``error`` with one line (``<what> not found: path`` or
    ``path: not valid JSON for <what> (...)``) instead of OS/JSON exceptions."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{what} not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON for {what} ({exc})") from exc


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions that matter for reproducing a result (provenance of every output)."""
    import platform

    import torch

    from calib import __version__

    return {"calib": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
