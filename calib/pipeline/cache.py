"""Stage cache of a run folder: a stage is redone only when its inputs changed or its outputs are gone.

Each finished stage writes ``cache/<stage>.json`` (:func:`calib.runfolder.artefacts.manifest`) *after* its
outputs (all written atomically):
the stage's key (sha256 of its inputs: options, upstream artefact hashes, and the hash of the code it
runs: :func:`code_hash`),
the sha256 of every output file and a small JSON ``info`` (metrics, timings) downstream stages and
the report read. An interrupted run leaves no manifest for the stage it was in, so re-running
resumes there; a changed option changes the key of the stages that depend on it, and only those.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from calib.io import read_json, sha256_file, to_jsonable, write_json
from calib.runfolder import artefacts as A

log = logging.getLogger(__name__)

FORMAT = "calib-stage"


def stage_key(stage: str, inputs: dict[str, Any]) -> str:
    """sha256 of the stage name and its JSON-normalised inputs."""
    blob = json.dumps({"stage": stage, "inputs": to_jsonable(inputs)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.lru_cache(maxsize=None)
def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # "calib.io.versions": an attribute, not a module
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _read_source(path: Path) -> bytes:
    return path.read_bytes()


@functools.lru_cache(maxsize=None)
def _imports_of(name: str, prefix: str) -> tuple[str, ...]:
    """The ``prefix`` modules that module ``name`` imports anywhere (functions included), except under
    ``if TYPE_CHECKING:``. ``from package import submodule`` counts the submodule, not the package's
    ``__init__`` (whose code the importer does not run); ``from package import name`` counts the package."""
    path = _module_file(name)
    if path is None:
        return ()
    tree = ast.parse(_read_source(path), str(path))
    skip = {id(n) for node in ast.walk(tree) if _is_type_checking(node) for b in node.body for n in ast.walk(b)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            found.update(subs)
            if not all(_module_file(m) is not None for m in subs):  # a name from the package itself
                found.add(base)
    return tuple(sorted(m for m in found if (m == prefix or m.startswith(prefix + ".")) and m != name
                        and _module_file(m) is not None))


def code_modules(*names: str, prefix: str = "calib") -> list[str]:
    """``names`` and every ``prefix`` module they import, transitively (sorted)."""
    seen: set[str] = set()
    todo = [n for n in names]
    while todo:
        name = todo.pop()
        if name in seen or _module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(_imports_of(name, prefix))
    return sorted(seen)


def code_hash(*roots: str | Callable[..., Any], prefix: str = "calib") -> str:
    """sha256 of the code a stage runs, for its cache key: for a module name, the module's source and
    that of every ``prefix`` module it imports, transitively; for a function (a stage's compute
    closure), its own source. Editing any of it recomputes the stage, with no version to bump."""
    h = hashlib.sha256()
    for name in code_modules(*[r for r in roots if isinstance(r, str)], prefix=prefix):
        h.update(name.encode() + b"\0" + _read_source(_module_file(name)) + b"\0")
    for fn in (r for r in roots if not isinstance(r, str)):
        while isinstance(fn, functools.partial):  # its bound arguments are the stage's options, not code
            fn = fn.func
        try:
            src = inspect.getsource(fn).encode()
        except (OSError, TypeError):  # no source (e.g. a builtin): its bytecode
            src = getattr(getattr(fn, "__code__", None), "co_code", repr(fn).encode())
        h.update(src + b"\0")
    return h.hexdigest()


@dataclass
class StageRecord:
    """What one stage did in this invocation: reused or computed, and its ``info``."""

    name: str
    key: str
    reused: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    device: str | None = None  # where its tensors ran (when it was computed)


class StageCache:
    """Manifests under ``<root>/cache``; outputs are paths relative to ``root``.

    ``on_stage(name, event, record)`` is called with ``start``, ``reused`` or ``done`` (the CLI
    prints it).
    """

    def __init__(self, root: Path, on_stage: Callable[[str, str, StageRecord | None], None] | None = None) -> None:
        self.root = Path(root)
        self.dir = self.root / A.CACHE
        self.on_stage = on_stage or (lambda *_: None)
        self.records: list[StageRecord] = []

    def manifest_path(self, stage: str) -> Path:
        return self.root / A.manifest(stage)

    def lookup(self, stage: str, key: str) -> dict[str, Any] | None:
        """The manifest if ``stage`` finished with this key and its outputs are intact, else ``None``."""
        path = self.manifest_path(stage)
        if not path.exists():
            return None
        try:
            doc = read_json(path, ValueError, "stage manifest")
        except ValueError:
            log.warning("ignoring unreadable stage manifest %s", path)
            return None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key:
            return None
        for rel, digest in (doc.get("outputs") or {}).items():
            p = self.root / rel
            if not p.exists() or sha256_file(p) != digest:
                log.info("stage %s: output %s is missing or changed; recomputing", stage, rel)
                return None
        return doc

    def run(self, stage: str, inputs: dict[str, Any], outputs: list[str], compute: Callable[[], dict[str, Any]],
            code: tuple[str | Callable[..., Any], ...] = (), device: str | None = None) -> StageRecord:
        """Reuse ``stage`` if its key and outputs match, else run ``compute()`` (which writes
        ``outputs`` and returns the stage's JSON ``info``) and record it.

        The key covers ``inputs`` and the code: ``compute``'s own source and ``code`` (module names,
        hashed with every calib module they import, and functions), see :func:`code_hash`. ``device``:
        where the stage's tensors ran (recorded in the manifest; provenance, not part of the key;
        ``None`` for stages without tensor work).
        """
        inputs = {**inputs, "code": code_hash(compute, *code)}
        key = stage_key(stage, inputs)
        doc = self.lookup(stage, key)
        if doc is not None:
            rec = StageRecord(stage, key, True, float(doc.get("seconds", 0.0)), doc.get("info") or {},
                              doc.get("device"))
            self.records.append(rec)
            self.on_stage(stage, "reused", rec)
            return rec
        self.on_stage(stage, "start", None)
        self.manifest_path(stage).unlink(missing_ok=True)
        t0 = time.perf_counter()
        info = compute() or {}
        seconds = time.perf_counter() - t0
        missing = [o for o in outputs if not (self.root / o).exists()]
        if missing:
            raise RuntimeError(f"stage {stage} did not write {missing}")
        write_json(self.manifest_path(stage), to_jsonable({
            "format": FORMAT, "stage": stage, "key": key, "inputs": inputs, "seconds": seconds, "device": device,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outputs": {o: sha256_file(self.root / o) for o in outputs}, "info": info}))
        rec = StageRecord(stage, key, False, seconds, info, device)
        self.records.append(rec)
        self.on_stage(stage, "done", rec)
        return rec

    def output_hash(self, rel: str) -> str:
        return sha256_file(self.root / rel)
