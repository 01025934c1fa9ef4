"""Stage cache of a run folder: a stage is redone only when its inputs changed or its outputs are gone.

Each finished stage writes ``cache/<stage>.json`` *after* its outputs (all written atomically):
the stage's key (sha256 of its inputs: options, upstream artefact hashes, the code's stage version),
the sha256 of every output file and a small JSON ``info`` (metrics, timings) downstream stages and
the report read. An interrupted run leaves no manifest for the stage it was in, so re-running
resumes there; a changed option changes the key of the stages that depend on it, and only those.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from calib.io import read_json, sha256_file, to_jsonable, write_json

log = logging.getLogger(__name__)

FORMAT = "calib-stage"


def stage_key(stage: str, inputs: dict[str, Any]) -> str:
    """sha256 of the stage name and its JSON-normalised inputs."""
    blob = json.dumps({"stage": stage, "inputs": to_jsonable(inputs)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def source_hash(*packages: str) -> str:
    """sha256 of the Python sources of ``packages`` (e.g. ``"calib.report"``): cheap stages put it
    in their key, so editing their code recomputes them."""
    import importlib

    h = hashlib.sha256()
    for name in packages:
        mod = importlib.import_module(name)
        files = sorted(Path(mod.__file__).parent.glob("*.py")) if mod.__file__.endswith("__init__.py") \
            else [Path(mod.__file__)]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@dataclass
class StageRecord:
    """What one stage did in this invocation: reused or computed, and its ``info``."""

    name: str
    key: str
    reused: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class StageCache:
    """Manifests under ``<root>/cache``; outputs are paths relative to ``root``.

    ``on_stage(name, event, record)`` is called with ``start``, ``reused`` or ``done`` (the CLI
    prints it).
    """

    def __init__(self, root: Path, on_stage: Callable[[str, str, StageRecord | None], None] | None = None) -> None:
        self.root = Path(root)
        self.dir = self.root / "cache"
        self.on_stage = on_stage or (lambda *_: None)
        self.records: list[StageRecord] = []

    def manifest_path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

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

    def run(self, stage: str, inputs: dict[str, Any], outputs: list[str], compute: Callable[[], dict[str, Any]]
            ) -> StageRecord:
        """Reuse ``stage`` if its key and outputs match, else run ``compute()`` (which writes
        ``outputs`` and returns the stage's JSON ``info``) and record it."""
        key = stage_key(stage, inputs)
        doc = self.lookup(stage, key)
        if doc is not None:
            rec = StageRecord(stage, key, True, float(doc.get("seconds", 0.0)), doc.get("info") or {})
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
            "format": FORMAT, "stage": stage, "key": key, "inputs": inputs, "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outputs": {o: sha256_file(self.root / o) for o in outputs}, "info": info}))
        rec = StageRecord(stage, key, False, seconds, info)
        self.records.append(rec)
        self.on_stage(stage, "done", rec)
        return rec

    def output_hash(self, rel: str) -> str:
        return sha256_file(self.root / rel)
